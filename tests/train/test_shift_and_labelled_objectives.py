"""CSI, self-OECL, the CLP two-stage recipe and CIDER as training objectives: the loss each one computes is
the one the papers define (checked against the loss modules on the same views), stages and warm-ups switch
on time, labels reach the labelled ones, and CIDER's prototypes survive a checkpoint."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conformood.augment import SimCLRViews, ViewConfig, rotate, rotation_outliers
from conformood.losses import CIDERLoss, CSILoss, NTXentLoss
from conformood.models import small_contrastive_model
from conformood.train import TrainConfig, Trainer
from conformood.train.objectives import (
    CIDERObjective,
    CLPTwoStageObjective,
    CSIObjective,
    SelfOECLObjective,
)


class IdentityViews:
    """Views that return the batch unchanged, so the objective's loss can be recomputed by hand."""

    config = ViewConfig(flip_p=0.0)

    def __call__(self, x, generator):
        return x

    def without_flip(self):
        return self


def _model(aux=None, seed=0):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return small_contrastive_model(1, widths=(4, 8, 8), projection_dim=8, aux_classes=aux).eval()


@pytest.fixture
def x():
    return torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(3))


def test_model_aux_head(x):
    model = _model(aux=3)
    z, logits = model(x, with_aux=True)
    assert z.shape == (6, 8) and logits.shape == (6, 3)
    torch.testing.assert_close(model(x), z)
    torch.testing.assert_close(model.aux_logits(x), logits)
    with pytest.raises(ValueError, match="auxiliary head"):
        _model()(x, with_aux=True)


def test_csi_objective_is_ntxent_over_shifted_instances_plus_shift_ce(x):
    model = _model(aux=4)
    loss = CSIObjective(IdentityViews(), temperature=0.5, shift_weight=0.7)(model, x, torch.Generator())
    shifted = torch.cat([rotate(x, a) for a in (0, 90, 180, 270)])
    labels = torch.arange(4).repeat_interleave(6)
    z, logits = model(torch.cat([shifted, shifted]), with_aux=True)
    expected = NTXentLoss(0.5)(*z.chunk(2)) + 0.7 * F.cross_entropy(logits, torch.cat([labels, labels]))
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(loss, CSILoss(0.5, shift_weight=0.7)(*z.chunk(2), logits, labels))


def test_self_oecl_objective_adds_the_outlier_norm_after_warmup(x):
    model = _model(aux=2)
    obj = SelfOECLObjective(IdentityViews(), temperature=0.5, norm_weight=2.0, warmup_epochs=1)
    obj.set_epoch(0)
    warm = obj(model, x, torch.Generator().manual_seed(0))
    shifted = torch.cat([x, rotate(x, 90)])
    labels = torch.arange(2).repeat_interleave(6)
    z, logits = model(torch.cat([shifted, shifted]), with_aux=True)
    csi = CSILoss(0.5)(*z.chunk(2), logits, labels)
    torch.testing.assert_close(warm, csi)  # alpha = 0 during the warm-up
    obj.set_epoch(1)
    g = torch.Generator().manual_seed(0)
    after = obj(model, x, g)
    # the outliers are x rotated by 180 or 270 degrees, one angle drawn per image: their mean norm was added
    oe, angle = rotation_outliers(x, (180, 270), per_sample=True, generator=torch.Generator().manual_seed(0))
    assert set(angle.tolist()) <= {0, 1}
    torch.testing.assert_close(after.detach(), (csi + 2.0 * model(oe).norm(dim=1).mean()).detach())
    with pytest.raises(ValueError, match="overlap"):
        SelfOECLObjective(IdentityViews(), id_shifts=(0, 90), oe_shifts=(90, 180))


def test_clp_objective_switches_stage_and_trains_the_classifier_only_in_stage_two(x):
    model = _model(aux=3).train()
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    obj = CLPTwoStageObjective(IdentityViews(), temperature=0.5, weight=100.0, label_smoothing=0.1, stage1_epochs=1)
    obj.set_epoch(0)
    assert obj.stage == 1
    model.zero_grad()
    obj(model, x, torch.Generator(), labels=labels).backward()
    assert model.aux_head.linear.weight.grad is None or not model.aux_head.linear.weight.grad.any()
    obj.set_epoch(1)
    assert obj.stage == 2
    model.zero_grad()
    loss = obj(model, x, torch.Generator(), labels=labels)
    loss.backward()
    assert model.aux_head.linear.weight.grad.abs().sum() > 0
    with torch.no_grad():
        z, logits = model(torch.cat([x, x]), with_aux=True)
        expected = NTXentLoss(0.5)(*z.chunk(2)) + 100.0 * F.cross_entropy(
            logits, torch.cat([labels, labels]), label_smoothing=0.1)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="labels"):
        obj(model, x, torch.Generator())


def test_cider_objective_uses_both_views_and_updates_prototypes(x):
    model = _model()
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    obj = CIDERObjective(IdentityViews(), n_classes=2, dim=8, temperature=0.1)
    reference = CIDERLoss(2, 8, temperature=0.1)
    loss = obj(model, x, torch.Generator(), labels=labels)
    z = model(torch.cat([x, x]))
    torch.testing.assert_close(loss, reference(z, torch.cat([labels, labels])))
    torch.testing.assert_close(obj.state_dict()["prototypes"], reference.prototypes)


def _cider_trainer(tmp_path, callbacks=()):
    model = _model(seed=1).train()
    views = SimCLRViews((8, 8), ViewConfig(crop_scale=(0.6, 1.0), flip_p=0.0))
    obj = CIDERObjective(views, n_classes=3, dim=8, temperature=0.1)
    trainer = Trainer(model, obj, TrainConfig(epochs=4, batch_size=8, lr=0.05, warmup_epochs=1),
                      checkpoint=None if tmp_path is None else tmp_path / "ckpt.safetensors", progress=False,
                      callbacks=callbacks)
    return model, obj, trainer


def test_labelled_objective_resumes_exactly_with_its_prototypes(tmp_path):
    images = torch.rand(24, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(24) % 3
    full, full_obj, t_full = _cider_trainer(None)
    t_full.fit(images, labels=labels)

    def stop_after_two(trainer):
        if trainer.epoch == 2:
            raise KeyboardInterrupt

    _, _, t_part = _cider_trainer(tmp_path, [stop_after_two])
    with pytest.raises(KeyboardInterrupt):
        t_part.fit(images, labels=labels)
    resumed, res_obj, t_res = _cider_trainer(tmp_path)
    t_res.fit(images, resume=True, labels=labels)
    assert all(math.isfinite(v) for v in t_res.history.loss)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)
    torch.testing.assert_close(full_obj.state_dict()["prototypes"], res_obj.state_dict()["prototypes"])


def test_trainer_checks_labels():
    images = torch.rand(8, 1, 8, 8)
    _, _, trainer = _cider_trainer(None)
    with pytest.raises(ValueError, match="needs class labels"):
        trainer.fit(images)
    with pytest.raises(ValueError, match="labels must be an integer tensor"):
        trainer.fit(images, labels=torch.zeros(7, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must be an integer tensor"):
        trainer.fit(images, labels=torch.zeros(8))
    with pytest.raises(ValueError, match="non-negative"):
        trainer.fit(images, labels=-torch.ones(8, dtype=torch.long))


def test_labelled_recipes_need_several_classes():
    from conformood.train.recipes import train_contrastive_encoder
    from conformood.train.run_config import TrainRunConfig

    images = torch.rand(8, 1, 8, 8)
    cfg = TrainRunConfig(objective="clp", epochs=1, batch_size=4, widths=(4, 8, 8), image_size=8)
    with pytest.raises(ValueError, match="needs the class labels"):
        train_contrastive_encoder(images, cfg, None, progress=False)
    with pytest.raises(ValueError, match="at least 2 classes"):
        train_contrastive_encoder(images, cfg, None, progress=False, labels=np.zeros(8, dtype=int))
    with pytest.raises(ValueError, match="normal_class"):
        TrainRunConfig(objective="cider", normal_class="3")
    model, _ = train_contrastive_encoder(images, cfg, None, progress=False, labels=np.array([5, 7] * 4))
    assert model.aux_head.n_classes == 2  # labels 5 and 7 become classes 0 and 1


class _Recorder(torch.nn.Module):
    """Records the batch an objective sends to the model; returns features and shift logits."""

    def __init__(self, n_shifts):
        super().__init__()
        self.n_shifts = n_shifts
        self.seen = None
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, x, with_aux=False):
        self.seen = x.detach().clone()
        z = x.flatten(1) * self.w
        return (z, z[:, : self.n_shifts]) if with_aux else z


@pytest.mark.parametrize("name", ["csi", "self_oecl"])
def test_every_view_labelled_k_is_the_k_th_shift_of_the_image_or_its_mirror(name):
    """Issue 15 item 9: views flip before the shift (as both reference codes). Flipping after it mislabels
    shifts, since hflip . R90 = R270 . hflip."""
    from conformood.augment import SimCLRViews, ViewConfig, rotate
    from conformood.train.objectives import CSIObjective, SelfOECLObjective

    identity = ViewConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.5, jitter_p=0.0, grayscale_p=0.0)
    views = SimCLRViews((6, 6), identity)
    x = torch.rand(16, 1, 6, 6, generator=torch.Generator().manual_seed(0))  # asymmetric images
    if name == "csi":
        angles, objective = (0, 90, 180, 270), CSIObjective(views, shifts=(0, 90, 180, 270))
    else:
        angles, objective = (0, 90), SelfOECLObjective(views)
    model = _Recorder(len(angles))
    objective(model, x, torch.Generator().manual_seed(1))
    seen = model.seen
    n, m = x.shape[0], x.shape[0] * len(angles)
    mirrored_any = False
    for view in (seen[:m], seen[m: 2 * m]):
        for j in range(m):
            k, i = divmod(j, n)
            plain, mirror = rotate(x[i: i + 1], angles[k])[0], rotate(x[i: i + 1].flip(-1), angles[k])[0]
            assert torch.allclose(view[j], plain, atol=1e-5) or torch.allclose(view[j], mirror, atol=1e-5), (k, i)
            mirrored_any |= not torch.allclose(view[j], plain, atol=1e-5)
    assert mirrored_any  # the flip is applied (before the shift)
    if name == "self_oecl":  # outlier views are R180 / R270 of the image or its mirror, never an ID shift
        for i, view in enumerate(seen[2 * m:]):
            candidates = [rotate(img, a)[0] for a in (180, 270) for img in (x[i: i + 1], x[i: i + 1].flip(-1))]
            assert any(torch.allclose(view, c, atol=1e-5) for c in candidates), i
