"""extract_features under a process group: two gloo processes, each extracting its block, give every feature
in order, equal to one process (for arrays, a Dataset and a DataLoader of 37 images, not divisible by 2)."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conformood.models import backbone_from_module, extract_features
from tests._processes import free_port

WORLD = 2


def _backbone():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return backbone_from_module(net, input_size=10)


def _images():
    return np.random.default_rng(0).integers(0, 256, size=(37, 3, 10, 10), dtype=np.uint8)


def _inputs():
    x = _images()
    t = torch.from_numpy(x)
    return {"array": x, "dataset": TensorDataset(t.float() / 255), "loader": DataLoader(TensorDataset(t), batch_size=4)}


def _worker(rank, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        backbone = _backbone()
        for name, data in _inputs().items():
            feats = extract_features(backbone, data, batch_size=5, progress=False)
            np.save(os.path.join(out_dir, f"{name}-{rank}.npy"), feats)
    finally:
        dist.destroy_process_group()



def test_two_processes_extract_what_one_does(tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    backbone = _backbone()
    single = extract_features(backbone, _images(), batch_size=5, progress=False)
    assert single.shape == (37, 6)
    for name in _inputs():
        for r in range(WORLD):
            assert np.allclose(np.load(tmp_path / f"{name}-{r}.npy"), single, atol=1e-6), (name, r)
