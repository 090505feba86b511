"""Scores that wrap an encoder and average over transformations of the input.

Each takes images (n, c, h, w) in [0, 1] (numpy or torch) and an ``encoder``: any ``torch.nn.Module``
mapping images to feature vectors (for OECL's norm scores the *unnormalised contrastive features*, i.e.
the projection head's output; for s_shift / s_ens the representation f_theta).
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import ArrayLike

from .. import models
from .._validation import check_positive_int
from ..augment import SimCLRViews, ViewConfig, rotate
from ..augment.rng import seeded_from
from ..data.arrays import to_float_images
from .base import BaseDetector
from .knn import KNNCosineDetector

ROTATIONS = (0, 90, 180, 270)


def _images(x) -> torch.Tensor:
    return to_float_images(x, "images")


def encode(encoder: torch.nn.Module, images: torch.Tensor, batch_size: int = 256, device: str = "cpu") -> np.ndarray:
    """Features of ``images`` (:func:`conformood.models.encode`) as float64 numpy (n, d)."""
    feats = models.encode(encoder, images, batch_size=batch_size, device=device).double().numpy()
    if feats.ndim != 2:
        raise ValueError(f"the encoder must return (n, d) features, got shape {feats.shape}")
    return feats


class _EncoderDetector(BaseDetector):
    # not saveable (the encoder is a module); the table still documents the learned state
    _learned = {"image_shape_": ("s",), "n_features_in_": "int"}

    def _check_encoder(self) -> None:
        if not isinstance(self.encoder, torch.nn.Module):
            raise ValueError("this detector needs encoder=<torch.nn.Module mapping images to features>")
        check_positive_int(self.batch_size, "batch_size")

    def _record_input(self, images: torch.Tensor) -> None:
        self.image_shape_ = np.asarray(images.shape[1:], dtype=np.int64)
        self.n_features_in_ = int(np.prod(images.shape[1:]))

    def _check_input(self, x) -> torch.Tensor:
        self._check_fitted()
        images = _images(x)
        if tuple(images.shape[1:]) != tuple(self.image_shape_.tolist()):
            raise ValueError(
                f"images must have shape (n, {', '.join(map(str, self.image_shape_))}), got {tuple(images.shape)}"
            )
        return images


class _ViewAverage(_EncoderDetector):
    def __init__(
        self, encoder=None, n_views: int = 32, view_config: ViewConfig | None = None, batch_size: int = 256,
        seed: int = 0, device: str = "cpu",
    ) -> None:
        self.encoder = encoder
        self.n_views = n_views
        self.view_config = view_config
        self.batch_size = batch_size
        self.seed = seed
        self.device = device

    def fit(self, features, labels=None):
        """Record the image shape; these scores need no training bank."""
        self._check_encoder()
        check_positive_int(self.n_views, "n_views")
        self._record_input(_images(features))
        return self

    def _view_features(self, images: torch.Tensor):
        """Yield the encoder's features of each of the ``n_views`` augmented copies (same views every call)."""
        views = SimCLRViews(tuple(images.shape[-2:]), self.view_config)
        gen = torch.Generator().manual_seed(self.seed)
        for _ in range(self.n_views):
            with seeded_from(gen):
                augmented = views(images)
            yield encode(self.encoder, augmented, self.batch_size, self.device)


class SMuDetector(_ViewAverage):
    """s_mu = ||E_t f(t(x))||_2^2 over ``n_views`` SimCLR augmentations (OECL paper eq. 10 and 16; T = 32).

    **Convention (differs from the authors' code).** The OECL reference scores the norm ||E_t f(t(x))||_2, not
    its square, and its average also includes the un-augmented view; here the paper's squared norm over the
    ``n_views`` augmented views only. The square is monotone, so a single score ranks inputs identically; the
    extra un-augmented view changes the values slightly.
    """

    def score_samples(self, features: ArrayLike) -> np.ndarray:
        images = self._check_input(features)
        mean = sum(self._view_features(images)) / self.n_views
        return np.einsum("ij,ij->i", mean, mean)


class L2EnsDetector(_ViewAverage):
    """s_l2-ens = E_t ||f(t(x))||_2^2 over ``n_views`` augmentations (OECL paper eq. 15)."""

    def score_samples(self, features: ArrayLike) -> np.ndarray:
        images = self._check_input(features)
        return sum(np.einsum("ij,ij->i", f, f) for f in self._view_features(images)) / self.n_views


class SimPlusSMuDetector(SMuDetector):
    """"sim + s_mu" (OECL paper appendix, Table VI): cosine similarity to the nearest training sample plus s_mu.

    The paper names the combination (after CSI) without a formula; this detector reads it as
    max_m cos(f(x), f(x_m)) + ||E_t f(t(x))||^2, with the similarity on the un-augmented input's features and
    s_mu as in :class:`SMuDetector`. ``fit`` encodes the training images into the similarity bank.
    """

    _learned = _EncoderDetector._learned | {"bank_": ("n", "e")}

    def fit(self, features: ArrayLike, labels: ArrayLike | None = None) -> SimPlusSMuDetector:
        super().fit(features, labels)
        self.bank_ = encode(self.encoder, _images(features), self.batch_size, self.device)
        self._knn = None
        return self

    def score_samples(self, features: ArrayLike) -> np.ndarray:
        images = self._check_input(features)
        if getattr(self, "_knn", None) is None:  # built once per fitted bank, not on every call
            self._knn = KNNCosineDetector(n_neighbors=1).fit(self.bank_)
        sim = self._knn.score_samples(encode(self.encoder, images, self.batch_size, self.device))
        return sim + super().score_samples(images)


class ShiftDetector(_EncoderDetector):
    """s_shift (FIRM paper appendix B eq. 5): s_con averaged over rotations R of the input and of the bank,

        s_shift(x) = 1/4 sum_{gamma in {0, 90, 180, 270}} s_con(R_gamma(x), R_gamma({x_m}), k).
    """

    def __init__(
        self,
        encoder: torch.nn.Module | None = None,
        n_neighbors: int = 1,
        batch_size: int = 256,
        device: str = "cpu",
    ) -> None:
        self.encoder = encoder
        self.n_neighbors = n_neighbors
        self.batch_size = batch_size
        self.device = device

    _learned = _EncoderDetector._learned | {"banks_": ("r", "n", "e")}
    _former_params = {"k": "n_neighbors"}

    def fit(self, features: ArrayLike, labels: ArrayLike | None = None) -> ShiftDetector:
        """Encode every rotation of the training images into one s_con bank per rotation."""
        self._check_encoder()
        images = _images(features)
        if images.shape[-1] != images.shape[-2]:
            raise ValueError("rotation ensembles need square images")
        self._record_input(images)
        self.banks_ = np.stack(
            [encode(self.encoder, rotate(images, a), self.batch_size, self.device) for a in ROTATIONS]
        )
        self._knns = None
        return self

    def _knn(self, r: int) -> KNNCosineDetector:
        """The s_con searcher of rotation r, built once per fitted bank (normalisation and index included)."""
        if getattr(self, "_knns", None) is None:
            self._knns = [KNNCosineDetector(n_neighbors=self.n_neighbors).fit(bank)
                          for bank in self.banks_]
        return self._knns[r]

    def _query_images(self, images: torch.Tensor, angle: int):
        yield rotate(images, angle)

    def score_samples(self, features: ArrayLike) -> np.ndarray:
        images = self._check_input(features)
        total = np.zeros(images.shape[0])
        count = 0
        for r, angle in enumerate(ROTATIONS):
            knn = self._knn(r)
            for query in self._query_images(images, angle):
                total += knn.score_samples(encode(self.encoder, query, self.batch_size, self.device))
                count += 1
        return total / count


class EnsDetector(ShiftDetector):
    """s_ens (FIRM paper appendix B eq. 6): s_shift with ``n_crops`` random resized crops (scale in
    ``crop_scale``, default [0.5, 1]) of each rotated input, averaged:

        s_ens(x) = 1/4 sum_theta 1/10 sum_i s_con(C_i(R_theta(x)), R_theta({x_m}), k).

    The crops are drawn from ``seed``, so a score does not change between calls.
    """

    def __init__(
        self,
        encoder: torch.nn.Module | None = None,
        n_neighbors: int = 1,
        n_crops: int = 10,
        crop_scale: tuple[float, float] = (0.5, 1.0),
        batch_size: int = 256,
        seed: int = 0,
        device: str = "cpu",
    ) -> None:
        super().__init__(encoder=encoder, n_neighbors=n_neighbors, batch_size=batch_size, device=device)
        self.n_crops = n_crops
        self.crop_scale = crop_scale
        self.seed = seed

    def _query_images(self, images: torch.Tensor, angle: int):
        import kornia.augmentation as K

        check_positive_int(self.n_crops, "n_crops")
        crop = K.RandomResizedCrop(tuple(images.shape[-2:]), scale=tuple(self.crop_scale))
        gen = torch.Generator().manual_seed(self.seed * 1000 + angle)
        rotated = rotate(images, angle)
        for _ in range(self.n_crops):
            with seeded_from(gen):
                yield crop(rotated)
