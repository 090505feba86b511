"""Two CPU processes (gloo) give the same loss and parameter gradients as one process on the global batch."""

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conformood.losses import CIDERLoss, CSILoss, FIRMLoss, NTXentLoss, OECLLoss, SupConLoss
from tests._processes import free_port

N_GLOBAL, D_IN, D_OUT, WORLD = 8, 5, 4, 2


def _batch():
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(N_GLOBAL, D_IN, generator=g, dtype=torch.float64)
    x2 = torch.randn(N_GLOBAL, D_IN, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (N_GLOBAL,), generator=g)
    flags = torch.tensor([True, False, True, True, False, True, False, False])
    logits_w = torch.randn(D_OUT, 4, generator=g, dtype=torch.float64) * 3
    x_oe = torch.randn(N_GLOBAL, D_IN, generator=g, dtype=torch.float64)
    return x1, x2, labels, flags, logits_w, x_oe


def _model():
    torch.manual_seed(1)
    return torch.nn.Linear(D_IN, D_OUT).double()


def _loss(name, model, x1, x2, labels, flags, logits_w, x_oe, distributed):
    z1, z2 = model(x1), model(x2)
    if name == "oecl":
        return OECLLoss(0.3, norm_weight=0.7, gather_distributed=distributed)(z1, z2, model(x_oe))
    if name == "cider":  # two calls: the second uses the prototypes the first left in the buffers
        loss = CIDERLoss(3, D_OUT, temperature=0.3, momentum=0.6, gather_distributed=distributed)
        first = loss(z1, labels)
        return first + loss(z2 @ torch.eye(D_OUT, dtype=z2.dtype), labels)
    if name == "ntxent":
        return NTXentLoss(0.3, gather_distributed=distributed)(z1, z2)
    if name == "supcon":
        return SupConLoss(0.3, gather_distributed=distributed)(z1, z2, labels)
    if name == "firm":
        return FIRMLoss(0.3, gather_distributed=distributed)(z1, z2, flags)
    shift_logits = torch.cat([z1, z2]) @ logits_w
    return CSILoss(0.3, gather_distributed=distributed)(z1, z2, shift_logits, labels)


def _worker(rank, port, name, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        x1, x2, labels, flags, logits_w, x_oe = _batch()
        part = slice(rank * N_GLOBAL // WORLD, (rank + 1) * N_GLOBAL // WORLD)
        model = _model()
        loss = _loss(name, model, x1[part], x2[part], labels[part], flags[part], logits_w, x_oe[part], True)
        loss.backward()
        for p in model.parameters():  # what DistributedDataParallel does: average gradients over ranks
            dist.all_reduce(p.grad)
            p.grad /= WORLD
        value = loss.detach().clone()
        dist.all_reduce(value)
        if rank == 0:
            np.save(os.path.join(out_dir, "loss.npy"), (value / WORLD).numpy())
            np.save(
                os.path.join(out_dir, "grads.npy"), torch.cat([p.grad.flatten() for p in model.parameters()]).numpy()
            )
    finally:
        dist.destroy_process_group()



@pytest.mark.parametrize("name", ["ntxent", "supcon", "firm", "csi", "oecl", "cider"])
def test_two_processes_equal_one(name, tmp_path):
    mp.spawn(_worker, args=(free_port(), name, str(tmp_path)), nprocs=WORLD, join=True)
    model = _model()
    loss = _loss(name, model, *_batch(), distributed=False)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()]).numpy()
    assert float(np.load(tmp_path / "loss.npy")) == pytest.approx(loss.item(), abs=1e-10)
    np.testing.assert_allclose(np.load(tmp_path / "grads.npy"), grads, atol=1e-10)
