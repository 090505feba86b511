import math

import numpy as np
import pytest
import torch

from conformood.augment import SimCLRViews, ViewConfig
from conformood.models import small_contrastive_model
from conformood.train import (
    FIRMRotationObjective,
    NTXentObjective,
    TrainConfig,
    Trainer,
    warmup_cosine_lr,
)


def test_warmup_cosine_schedule():
    lrs = [warmup_cosine_lr(s, 100, 10, 1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    with pytest.raises(ValueError):
        warmup_cosine_lr(0, 10, 11, 1.0)


def _setup(tmp_path=None, epochs=4, seed=0, callbacks=(), optimizer="sgd"):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = small_contrastive_model(1, widths=(4, 8, 8), projection_dim=8)
    views = SimCLRViews((8, 8), ViewConfig(crop_scale=(0.6, 1.0), flip_p=0.0))
    trainer = Trainer(
        model,
        FIRMRotationObjective(views),
        TrainConfig(epochs=epochs, batch_size=8, lr=0.05 if optimizer != "adamw" else 1e-3, warmup_epochs=1, seed=seed,
                    optimizer=optimizer),
        checkpoint=None if tmp_path is None else tmp_path / "ckpt.safetensors",
        progress=False,
        callbacks=callbacks,
    )
    return model, trainer


@pytest.fixture
def images():
    return torch.rand(24, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def test_training_is_seeded_and_changes_weights(images):
    m1, t1 = _setup()
    before = [p.detach().clone() for p in m1.parameters()]
    h1 = t1.fit(images)
    m2, t2 = _setup()
    t2.fit(images)
    assert len(h1.loss) == 4 and all(math.isfinite(v) for v in h1.loss)
    assert any(not torch.equal(a, p) for a, p in zip(before, m1.parameters()))
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("optimizer", ["sgd", "lars", "adamw"])
def test_resume_reproduces_uninterrupted_run(tmp_path, images, optimizer):
    full, t_full = _setup(epochs=4, optimizer=optimizer)
    t_full.fit(images)

    def interrupt_after_two(trainer):
        if trainer.epoch == 2:
            raise KeyboardInterrupt  # as Ctrl-C would, half-way through

    part, t_part = _setup(tmp_path, epochs=4, callbacks=[interrupt_after_two], optimizer=optimizer)
    with pytest.raises(KeyboardInterrupt):
        t_part.fit(images)
    resumed, t_res = _setup(tmp_path, epochs=4, optimizer=optimizer)
    t_res.fit(images, resume=True)
    assert t_res.epoch == 4 and len(t_res.history.loss) == 4
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporary files


def test_loss_decreases_on_a_learnable_problem():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = small_contrastive_model(1, widths=(8, 16, 16), projection_dim=16)
    images = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    views = SimCLRViews((8, 8), ViewConfig(crop_scale=(0.8, 1.0), flip_p=0.0, jitter=(0.1, 0.1, 0, 0)))
    hist = Trainer(model, NTXentObjective(views), TrainConfig(epochs=15, batch_size=32, lr=0.1, warmup_epochs=1),
                   progress=False).fit(images)
    assert min(hist.loss[-3:]) < hist.loss[0] - 0.2


def test_trainer_input_validation():
    _, trainer = _setup()
    with pytest.raises(ValueError, match="float tensor"):
        trainer.fit(torch.zeros(4, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="NaN"):
        trainer.fit(torch.full((4, 1, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="warmup_epochs"):
        TrainConfig(epochs=2, warmup_epochs=3)


def test_lars_step_matches_the_formula():
    from conformood.train.optimizers import LARS

    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS([w, b], lr=0.5, momentum=0.0, weight_decay=0.1, trust_coefficient=0.01)
    w.grad = torch.tensor([[0.0, 1.0]])
    b.grad = torch.tensor([2.0])
    opt.step()
    d = torch.tensor([[0.3, 1.4]])  # grad + 0.1 * w
    trust = 0.01 * 5.0 / torch.linalg.vector_norm(d)
    torch.testing.assert_close(w.detach(), torch.tensor([[3.0, 4.0]]) - 0.5 * trust * d)
    torch.testing.assert_close(b.detach(), torch.tensor([0.0]))  # 1-D: plain SGD, no decay
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="rmsprop")


def test_norm_and_auroc_callbacks_record_every_epoch(tmp_path, images):
    from conformood.augment import rotate
    from conformood.report import plot_training_diagnostics
    from conformood.train.callbacks import AUROCCallback, FeatureNormCallback

    outliers = rotate(images[:16], 90)
    norms = FeatureNormCallback(images[:16], outliers)
    eval_x = torch.cat([images[16:24], outliers[:8]])
    au = AUROCCallback(images[:16], eval_x, np.r_[np.ones(8, bool), np.zeros(8, bool)], n_neighbors=1)
    _, trainer = _setup(epochs=3, callbacks=[norms, au])
    trainer.fit(images)
    assert norms.epochs == [1, 2, 3] and len(norms.outlier_norm) == 3
    assert all(n > 0 for n in norms.inlier_norm)
    assert len(au.aurocs) == 3 and all(0.0 <= a <= 1.0 for a in au.aurocs)
    assert min(au.aurocs) <= au.aulc <= max(au.aurocs)
    plot_training_diagnostics(tmp_path / "diag.png", norms, au)
    assert (tmp_path / "diag.png").stat().st_size > 1000


def test_aulc_is_the_trapezoid_on_a_unit_axis():
    from conformood.metrics import aulc

    assert aulc([0.5, 0.7, 0.9]) == pytest.approx(0.7)
    assert aulc([0.6, 1.0], epochs=[10, 20]) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="increasing"):
        aulc([0.5, 0.6], epochs=[2, 1])


def test_an_interrupt_inside_an_epoch_keeps_the_last_epoch_checkpoint_and_resumes_exactly(tmp_path, images):
    """Ctrl-C in the middle of an epoch used to save that half-trained state under the previous epoch's count, so
    the resumed run repeated part of the epoch. Now the last epoch-boundary checkpoint stays."""
    full, t_full = _setup(epochs=4)
    t_full.fit(images)
    part, t_part = _setup(tmp_path, epochs=4)
    original = t_part.objective
    calls = {"n": 0}

    def interrupting(model, batch, generator, **kw):
        calls["n"] += 1
        if calls["n"] == 8:  # the second batch of the third epoch (3 batches of 8 per epoch)
            raise KeyboardInterrupt
        return original(model, batch, generator, **kw)

    t_part.objective = interrupting
    with pytest.raises(KeyboardInterrupt):
        t_part.fit(images)
    resumed, t_res = _setup(tmp_path, epochs=4)
    t_res.fit(images, resume=True)
    assert len(t_res.history.loss) == 4
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)


def test_stale_temporaries_of_a_killed_write_are_removed_on_start(tmp_path, images):
    stale = tmp_path / ".ckpt.safetensors.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    unrelated = tmp_path / ".other.json.x.tmp"
    unrelated.write_text("{}")
    _, trainer = _setup(tmp_path, epochs=1)
    trainer.fit(images)
    assert not stale.exists() and unrelated.exists()


def test_the_progress_bar_counts_batches_within_epochs(tmp_path, images, capsys):
    _, trainer = _setup(epochs=2)
    trainer.progress = True
    trainer.fit(images)
    err = capsys.readouterr().err
    assert "batch" in err and "epoch 2/2" in err
