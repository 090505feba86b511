import json

import numpy as np
import pytest
import torch

from conformood.io import (
    FORMAT_VERSION,
    atomic_path,
    load_state,
    save_state,
    write_json,
)


def test_save_load_roundtrip(tmp_path):
    path = tmp_path / "state.safetensors"
    save_state(path, {"a": torch.arange(6.0).reshape(2, 3), "b": np.ones(4, dtype=np.int64)}, {"k": 3}, kind="thing")
    tensors, config = load_state(path, kind="thing")
    assert torch.equal(tensors["a"], torch.arange(6.0).reshape(2, 3))
    assert tensors["b"].dtype == torch.int64
    assert config == {"k": 3}
    with pytest.raises(ValueError, match="holds a 'thing'"):
        load_state(path, kind="other")


def test_rejects_foreign_and_newer_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ValueError, match="not one written by conformood"):
        load_state(tmp_path / "foreign.safetensors")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "new.safetensors"),
              metadata={"conformood_format": str(FORMAT_VERSION + 1), "kind": "x", "config": "{}"})
    with pytest.raises(ValueError, match="format version"):
        load_state(tmp_path / "new.safetensors")
    with pytest.raises(FileNotFoundError):
        load_state(tmp_path / "missing.safetensors")


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "r.json"
    write_json(path, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("crash while writing")
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
