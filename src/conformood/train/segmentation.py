"""Training of the segmentation base model and of the threshold predictors of AT and COAT.

Paper: ``coat-adaptive-threshold-segmentation.md`` — base model on D_1 (Algorithm 1 line 3); f_D trained on
D_2 with L_AT (eq. 8, targets τ* from :func:`conformood.conformal.oracle_thresholds`) or with L_COAT
(Algorithm 1 lines 5–14). Everything is seeded by the ``seed`` argument; nothing touches global RNG state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .._validation import check_alpha, check_positive_float, check_positive_int
from ..conformal.risk_control import check_masks, check_probability_maps, oracle_thresholds
from ..data.segmentation import SegmentationData
from ..losses.coverage import ATLoss, COATLoss
from ..models.segmentation import SmallUNet, ThresholdPredictor


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


def train_segmentation_model(
    data: SegmentationData,
    epochs: int = 30,
    batch_size: int = 16,
    lr: float = 2e-3,
    widths: tuple[int, ...] = (16, 32, 64),
    seed: int = 0,
    progress: bool = True,
) -> tuple[SmallUNet, list[float]]:
    """A :class:`SmallUNet` trained with pixel-wise binary cross-entropy (Adam, cosine schedule, h-flips).

    Returns the model (eval mode) and the mean training loss per epoch.
    """
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    lr = check_positive_float(lr, "lr")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallUNet(3, widths)
    x = torch.from_numpy(data.float_images())
    y = torch.from_numpy(data.masks.astype(np.float32)).unsqueeze(1)
    g = _generator(seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((len(data) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    # Class balance: positives are rare (cars cover ~5% of CamVid), so weight them by the inverse ratio.
    pos = float(y.mean())
    pos_weight = torch.tensor((1.0 - pos) / max(pos, 1e-6)) ** 0.5
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    history = []
    model.train()
    for _ in tqdm(range(epochs), desc="segmentation model", disable=not progress, leave=False):
        order = torch.randperm(len(data), generator=g)
        total = 0.0
        for start in range(0, len(data), batch_size):
            idx = order[start : start + batch_size]
            xb, yb = x[idx], y[idx]
            flip = torch.rand(idx.shape[0], generator=g) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            yb = torch.where(flip[:, None, None, None], yb.flip(-1), yb)
            loss = loss_fn(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * idx.shape[0]
        history.append(total / len(data))
    model.eval()
    return model, history


@torch.no_grad()
def predict_probabilities(model: SmallUNet, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Probability maps (n, h, w) float32 for float images (n, 3, h, w) in [0, 1]."""
    model.eval()
    out = [model.probabilities(torch.from_numpy(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy().astype(np.float32)


@dataclass
class ThresholdTraining:
    """A trained threshold predictor and its per-epoch training loss."""

    model: ThresholdPredictor
    method: str
    alpha: float
    losses: list[float] = field(default_factory=list)

    @torch.no_grad()
    def predict(self, images: np.ndarray, probs: np.ndarray, batch_size: int = 128) -> np.ndarray:
        """τ̂ (n,) float64 for float images (n, 3, h, w) and probability maps (n, h, w)."""
        self.model.eval()
        out = [
            self.model(torch.from_numpy(images[i : i + batch_size]), torch.from_numpy(probs[i : i + batch_size]))
            for i in range(0, len(images), batch_size)
        ]
        return torch.cat(out).double().numpy()


def train_threshold_predictor(
    images: np.ndarray,
    probs: np.ndarray,
    masks: np.ndarray,
    alpha: float,
    method: str = "coat",
    epochs: int | None = None,
    batch_size: int = 16,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    temperature: float = 0.05,
    seed: int = 0,
    progress: bool = False,
) -> ThresholdTraining:
    """Train f_D with L_AT (``method="at"``, eq. 8) or L_COAT (``method="coat"``, Algorithm 1).

    Parameters
    ----------
    images : float32 (n, 3, h, w) in [0, 1]
    probs : float32 (n, h, w), the base model's probability maps
    masks : bool (n, h, w), non-empty ground-truth masks
    epochs : default 30 for AT and 60 for COAT, as in the paper's app. A.3
    temperature : T of the soft mask σ((p̂ − τ̂)/T) (COAT only; paper: 0.05)
    """
    alpha = check_alpha(alpha)
    if method not in ("at", "coat"):
        raise ValueError(f"method must be 'at' or 'coat', got {method!r}")
    p = check_probability_maps(probs)
    m = check_masks(masks, p.shape)
    if images.ndim != 4 or images.shape[0] != p.shape[0] or images.shape[-2:] != p.shape[-2:]:
        raise ValueError(f"images must be (n, 3, h, w) matching maps {p.shape}, got {images.shape}")
    epochs = check_positive_int(epochs if epochs is not None else (30 if method == "at" else 60), "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ThresholdPredictor()
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    pm = torch.from_numpy(np.ascontiguousarray(p, dtype=np.float32))
    ym = torch.from_numpy(m)
    if method == "at":
        targets = torch.from_numpy(oracle_thresholds(p, m, alpha)).float()
        loss_fn = ATLoss()
    else:
        loss_fn = COATLoss(alpha, temperature)
    g = _generator(seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    n = x.shape[0]
    steps = epochs * ((n + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    result = ThresholdTraining(model=model, method=method, alpha=alpha)
    model.train()
    for _ in tqdm(range(epochs), desc=f"{method.upper()} threshold predictor", disable=not progress, leave=False):
        order = torch.randperm(n, generator=g)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            if idx.shape[0] < 2 and n > 1:  # BatchNorm needs two samples
                continue
            flip = torch.rand(idx.shape[0], generator=g) < 0.5
            xb = torch.where(flip[:, None, None, None], x[idx].flip(-1), x[idx])
            pb = torch.where(flip[:, None, None], pm[idx].flip(-1), pm[idx])
            tau = model(xb, pb)
            if method == "at":
                loss = loss_fn(tau, targets[idx])
            else:
                yb = torch.where(flip[:, None, None], ym[idx].flip(-1), ym[idx])
                loss = loss_fn(pb, yb, tau)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * idx.shape[0]
        result.losses.append(total / n)
    model.eval()
    return result
