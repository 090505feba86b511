"""Every training loop that runs on the one Trainer resumes exactly: interrupted after two epochs and resumed
from its checkpoint, it ends with the very weights (and history) of the uninterrupted run."""

import numpy as np
import pytest
import torch

from conformood.conformal import (
    SingleNormSet,
    train_conformal_set,
    train_threshold_predictor,
)
from conformood.data.segmentation import synthetic_segmentation
from conformood.train import BestEpoch, fit_clp_ensemble
from conformood.train.segmentation import train_segmentation_model


def interrupt_after(epochs: int):
    def callback(trainer):
        if trainer.epoch == epochs:
            raise KeyboardInterrupt  # as Ctrl-C would

    return callback


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


class EpochsSeen:
    def __init__(self):
        self.epochs = []

    def __call__(self, trainer):
        self.epochs.append(trainer.epoch)


def resumed_equals_uninterrupted(train, tmp_path, epochs: int = 4):
    """``train(checkpoint, resume, callbacks)`` -> (module, history) run three ways; the resumed run must train
    only the epochs after the interruption (a retrain from scratch would also end with equal weights)."""
    full, full_history = train(None, False, ())
    ckpt = tmp_path / "ckpt.safetensors"
    with pytest.raises(KeyboardInterrupt):
        train(ckpt, False, (interrupt_after(2),))
    assert ckpt.is_file()
    seen = EpochsSeen()
    resumed, resumed_history = train(ckpt, True, (seen,))
    assert seen.epochs == list(range(3, epochs + 1))
    assert_same_state(full, resumed)
    np.testing.assert_array_equal(full_history, resumed_history)
    return full


@pytest.fixture(scope="module")
def segmentation():
    return synthetic_segmentation(24, height=16, width=16, seed=0)


def test_segmentation_model_resumes_exactly(tmp_path, segmentation):
    data, _ = segmentation

    def train(checkpoint, resume, callbacks):
        return train_segmentation_model(data, epochs=4, batch_size=7, widths=(4, 8, 8), seed=3, progress=False,
                                        checkpoint=checkpoint, resume=resume, callbacks=callbacks)

    resumed_equals_uninterrupted(train, tmp_path)


@pytest.mark.parametrize("method", ["at", "coat"])
def test_threshold_predictor_resumes_exactly(tmp_path, segmentation, method):
    data, probs = segmentation
    images = data.float_images()

    def train(checkpoint, resume, callbacks):
        out = train_threshold_predictor(images, probs, data.masks, 0.1, method=method, epochs=4, batch_size=5, seed=1,
                                        checkpoint=checkpoint, resume=resume, callbacks=callbacks)
        return out.model, out.losses

    resumed_equals_uninterrupted(train, tmp_path)


def test_conformal_set_training_resumes_exactly_with_its_best_epoch(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 40)
    x = rng.normal(size=(120, 3)) + 3.0 * np.eye(3)[y]

    def train(checkpoint, resume, callbacks):
        cset = SingleNormSet(3, alpha=0.1)
        result = train_conformal_set(cset, x, y, objective="neg", pairs_per_anchor=10, epochs=5, batch_size=32, seed=2,
                                     checkpoint=checkpoint, resume=resume, callbacks=callbacks)
        train.result = result
        return cset, [h["exclusion"] for h in result.history]

    full = resumed_equals_uninterrupted(train, tmp_path, epochs=5)
    assert full is not None and len(train.result.history) == 5
    # the kept state is the best epoch's, restored after resume as well
    assert train.result.best_exclusion == max(h["exclusion"] for h in train.result.history)


def test_best_epoch_restores_the_best_state_not_the_last():
    model = torch.nn.Linear(1, 1, bias=False)

    class Trainer:  # the attributes BestEpoch reads
        epoch = 0

    trainer = Trainer()
    trainer.model = model
    best = BestEpoch(lambda t: [0.2, 0.9, 0.5][t.epoch - 1], mode="max")
    for epoch, w in enumerate([1.0, 2.0, 3.0], start=1):
        model.weight.data.fill_(w)
        trainer.epoch = epoch
        best(trainer)
    best.on_train_end(trainer)
    assert best.best_epoch == 1 and best.best_value == 0.9 and float(model.weight.detach()) == 2.0


def test_clp_ensemble_members_resume_exactly(tmp_path):
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 30)
    x = rng.normal(size=(90, 4)) + 2.0 * np.eye(4)[y]
    full = fit_clp_ensemble(x, y, n_members=2, hidden=(8,), epochs=4, batch_size=16, seed=5)
    with pytest.raises(KeyboardInterrupt):
        fit_clp_ensemble(x, y, n_members=2, hidden=(8,), epochs=4, batch_size=16, seed=5, checkpoint_dir=tmp_path,
                         callbacks=(interrupt_after(2),))
    seen = EpochsSeen()
    resumed = fit_clp_ensemble(x, y, n_members=2, hidden=(8,), epochs=4, batch_size=16, seed=5,
                               checkpoint_dir=tmp_path, resume=True, callbacks=(seen,))
    assert seen.epochs == [3, 4, 1, 2, 3, 4]  # member 0 resumes after epoch 2, member 1 had not started
    for a, b in zip(full, resumed, strict=True):
        assert_same_state(a.model, b.model)
        np.testing.assert_array_equal(a.predict_proba(x), b.predict_proba(x))


def test_resume_refuses_a_checkpoint_of_a_different_run(tmp_path):
    """A FIRM class-3 checkpoint resumed as NT-Xent class 5 used to train nothing and report "ntxent, class 5"
    over FIRM's weights; now it is refused with the fields that differ."""
    import json

    from typer.testing import CliRunner

    from conformood.cli import app

    base = ["train", "--out", str(tmp_path), "--epochs", "2", "--no-progress", "--device", "cpu", "--image-size", "8"]
    assert CliRunner().invoke(app, [*base, "--normal-class", "3"]).exit_code == 0
    first = json.loads((tmp_path / "train.json").read_text())
    result = CliRunner().invoke(app, [*base, "--normal-class", "5", "--objective", "ntxent", "--resume"])
    assert result.exit_code == 2
    assert "different run" in result.output and "normal_class" in result.output and "objective" in result.output
    assert json.loads((tmp_path / "train.json").read_text()) == first  # nothing was overwritten
    # the same run resumes
    assert CliRunner().invoke(app, [*base, "--normal-class", "3", "--resume"]).exit_code == 0
