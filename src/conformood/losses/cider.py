"""CIDER: compactness and dispersion around class prototypes on the hypersphere (Ming et al. 2023)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as dist_utils
from .._validation import check_positive_float, check_positive_int
from ._common import check_embeddings, check_sample_vector, unit_rows


class CIDERLoss(nn.Module):
    """L = dispersion_weight * L_dis + compactness_weight * L_comp, a baseline of the CCS paper (Table 2).

    Prototypes mu_c (unit vectors, one per class) follow an exponential moving average: for each sample j of
    the batch in order, mu_{y_j} <- normalise(momentum * mu_{y_j} + (1 - momentum) * z_j). Then

        L_dis  = (T / T_base) * 1/C sum_c log( 1/(C-1) sum_{c' != c} exp(mu_c . mu_c' / T) )
        L_comp = -(T / T_base) * 1/n sum_j log( exp(z_j . mu_{y_j} / T) / sum_c exp(z_j . mu_c / T) )

    L_dis is differentiated through this batch's prototype update; the stored prototypes and those used by
    L_comp are detached (as in the authors' code). Call with embeddings ``z`` (n, d) and labels (n,).

    With ``gather_distributed`` inside a process group, every rank runs the prototype update over the global
    batch (the ranks' rows in rank order, gathered with gradients), so the prototype buffers stay identical
    on every rank, and L_comp averages over the local rows (the gradient average over ranks makes it the
    global mean): two processes equal one process on the concatenated batch.

    **Convention (differs from the authors' code).** The authors build ``CompLoss`` with base temperature 0.07
    but ``DisLoss`` with 0.1, so their compactness term carries an extra factor T / 0.07 relative to the
    dispersion term; here both terms use one ``base_temperature`` (default 0.1) and the balance is set
    explicitly with ``compactness_weight`` and ``dispersion_weight``.
    """

    def __init__(
        self, n_classes: int, dim: int, temperature: float = 0.1, base_temperature: float = 0.1,
        momentum: float = 0.5, compactness_weight: float = 1.0, dispersion_weight: float = 1.0,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        self.n_classes = check_positive_int(n_classes, "n_classes", minimum=2)
        self.dim = check_positive_int(dim, "dim")
        self.temperature = check_positive_float(temperature, "temperature")
        self.base_temperature = check_positive_float(base_temperature, "base_temperature")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        self.compactness_weight = float(compactness_weight)
        self.dispersion_weight = float(dispersion_weight)
        self.gather_distributed = bool(gather_distributed)
        self.register_buffer("prototypes", torch.zeros(n_classes, dim))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def init_prototypes(self, z: torch.Tensor, labels: torch.Tensor) -> None:
        """Set each prototype to the normalised mean embedding of its class (classes absent stay random)."""
        check_embeddings(z, "z")
        check_sample_vector(labels, "labels", z.shape[0], torch.long)
        zn = unit_rows(z, dim=1)
        sums = torch.zeros(self.n_classes, self.dim, dtype=zn.dtype, device=zn.device).index_add_(0, labels, zn)
        counts = torch.bincount(labels, minlength=self.n_classes)
        random = F.normalize(torch.randn(self.n_classes, self.dim, dtype=zn.dtype, device=zn.device), dim=1)
        self.prototypes.copy_(torch.where(counts[:, None] > 0, F.normalize(sums, dim=1), random))
        self.initialised.fill_(True)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_embeddings(z, "z")
        if z.shape[1] != self.dim:
            raise ValueError(f"z must have {self.dim} dimensions, got {z.shape[1]}")
        check_sample_vector(labels, "labels", z.shape[0], torch.long)
        if labels.min() < 0 or labels.max() >= self.n_classes:
            raise ValueError(f"labels must lie in 0..{self.n_classes - 1}")
        labels = labels.long()
        if self.gather_distributed and dist_utils.is_distributed():
            z_all, labels_all = dist_utils.gather_with_grad(z), dist_utils.gather_no_grad(labels)
        else:
            z_all, labels_all = z, labels
        if not bool(self.initialised):
            self.init_prototypes(z_all.detach(), labels_all)
        zn = unit_rows(z, dim=1)
        zn_all = unit_rows(z_all, dim=1)
        protos = list(self.prototypes.to(zn.dtype).unbind(0))
        for j in range(zn_all.shape[0]):  # the EMA is a sequential recurrence, as in the reference implementation
            c = int(labels_all[j])
            protos[c] = F.normalize(protos[c] * self.momentum + zn_all[j] * (1.0 - self.momentum), dim=0)
        updated = torch.stack(protos)
        with torch.no_grad():
            self.prototypes.copy_(updated.detach())
        scale = self.temperature / self.base_temperature
        logits = updated @ updated.T / self.temperature
        off = ~torch.eye(self.n_classes, dtype=torch.bool, device=z.device)
        neg = torch.logsumexp(logits.masked_fill(~off, float("-inf")), dim=1) - torch.log(off.sum(1).to(zn.dtype))
        dispersion = scale * neg.mean()
        comp_logits = zn @ updated.detach().T / self.temperature
        compactness = (
            -scale * (comp_logits.gather(1, labels[:, None]).squeeze(1) - torch.logsumexp(comp_logits, 1)).mean()
        )
        return self.dispersion_weight * dispersion + self.compactness_weight * compactness
