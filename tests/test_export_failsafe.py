"""The exported scorer fails safe: bad rows are an error inside the program (never a decision), bad examples and
encoders are refused when exporting, the file is sealed by its SHA-256 (every flipped byte and a swapped
metadata file refused), a scorer that cannot flag is refused, and outputs honour the umask."""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np
import pytest
import torch

from conformood.conformal import ConformalDetector
from conformood.export import export_scorer, load_scorer
from conformood.scores import get_detector

EXPORTABLE = ["knn_cosine", "knn_cosine_norm", "knn_sun", "mahalanobis", "gaussian", "center", "l2_norm", "msp",
              "energy", "maxlogit"]
RNG = np.random.default_rng(0)
TRAIN = (RNG.normal(size=(200, 6)) + 1).astype(np.float32)
CAL = (RNG.normal(size=(100, 6)) + 1).astype(np.float32)
LABELS = RNG.integers(0, 3, 200)


def _export(name, path, alpha=0.1, **kw):
    cd = ConformalDetector(get_detector(name).fit(TRAIN, LABELS)).calibrate(CAL)
    export_scorer(cd, alpha, torch.from_numpy(CAL[:4]), path, **kw)
    return cd


@pytest.mark.parametrize("name", EXPORTABLE)
def test_bad_rows_are_an_error_or_the_librarys_answer_never_a_silent_decision(name, tmp_path):
    cd = _export(name, tmp_path / "s.pt2")
    program, _ = load_scorer(tmp_path / "s.pt2")
    for bad in (np.nan, np.inf, -np.inf):
        rows = CAL[:3].copy()
        rows[1, 2] = bad
        with pytest.raises(RuntimeError, match="NaN or infinite"):
            program(torch.from_numpy(rows))
    zero = np.zeros((2, 6), np.float32)
    if name in ("knn_cosine", "knn_cosine_norm", "knn_sun", "center"):  # the library refuses them too
        with pytest.raises(ValueError):
            cd.p_values(zero)
        with pytest.raises(RuntimeError, match="all-zero"):
            program(torch.from_numpy(zero))
    else:
        _, p, _ = program(torch.from_numpy(zero))
        np.testing.assert_allclose(p.numpy(), cd.p_values(zero), atol=1e-12)
    ints = np.rint(CAL[:20] * 3).astype(np.int64)  # torch.export's input guard refuses another dtype
    with pytest.raises(RuntimeError, match="dtype"):
        program(torch.from_numpy(ints))
    with pytest.raises(Exception, match="6|shape|size"):  # a wrong width fails the program's shape guard
        program(torch.zeros(2, 5))


def test_bad_examples_and_encoders_are_refused(tmp_path):
    cd = ConformalDetector(get_detector("knn_cosine").fit(TRAIN)).calibrate(CAL)
    out = tmp_path / "s.pt2"
    cases = [
        (torch.zeros(2, 6, dtype=torch.int64), "floating point"),
        (torch.zeros(2, 5), "fitted on 6"),
        (torch.zeros(2, 3, 2), r"\(batch, features\)"),
        (torch.zeros(1, 6), "at least 2"),
        (torch.full((2, 6), float("nan")), "NaN"),
        ("text", "tensor or an array"),
    ]
    for example, needle in cases:
        with pytest.raises(ValueError, match=needle):
            export_scorer(cd, 0.1, example, out)
    export_scorer(cd, 0.1, CAL[:2], out)  # a numpy example is converted
    assert load_scorer(out)[1]["input"]["dtype"] == "float32"
    with pytest.raises(ValueError, match="encoder makes"):
        export_scorer(cd, 0.1, torch.zeros(2, 3, 8, 8), out, encoder=torch.nn.Sequential(torch.nn.Flatten()),
                      metadata={}, allow_no_flags=False)
    with pytest.raises(ValueError, match="cannot take the example"):
        export_scorer(cd, 0.1, torch.zeros(2, 3, 8, 8), out, encoder=torch.nn.Linear(4, 6))


def test_a_scorer_that_cannot_flag_is_refused_unless_allowed(tmp_path):
    cd = ConformalDetector(get_detector("knn_cosine").fit(TRAIN)).calibrate(CAL[:20], delta=0.05)
    with pytest.raises(ValueError, match="never flag"):
        export_scorer(cd, 0.05, CAL[:2], tmp_path / "s.pt2")
    assert not (tmp_path / "s.pt2").exists()
    cd = ConformalDetector(get_detector("knn_cosine").fit(TRAIN)).calibrate(CAL[:30])
    with pytest.raises(ValueError, match="never flag"):
        export_scorer(cd, 0.01, CAL[:2], tmp_path / "s.pt2")
    meta = export_scorer(cd, 0.01, CAL[:2], tmp_path / "s.pt2", allow_no_flags=True)
    assert meta["allow_no_flags"] is True and meta["flag_rank"] == 0


def test_every_flipped_byte_region_and_a_swapped_metadata_file_are_refused(tmp_path):
    _export("mahalanobis", tmp_path / "a.pt2", alpha=0.1)
    _export("mahalanobis", tmp_path / "b.pt2", alpha=0.3)
    data = (tmp_path / "a.pt2").read_bytes()
    load_scorer(tmp_path / "a.pt2")
    # one flipped byte in each member's data, in each header, and in the seal itself
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        infos = z.infolist()
    offsets = {0, len(data) - 1, len(data) - 30}
    for info in infos:
        offsets |= {info.header_offset + 2, info.header_offset + 30 + len(info.filename) + 1}
        if info.file_size:
            start = info.header_offset + 30 + len(info.filename)
            offsets |= {start + info.file_size // 2 + 64}
    offsets = {o for o in offsets if 0 <= o < len(data)}
    assert len(offsets) >= 2 * len(infos)
    for o in sorted(offsets):
        bad = bytearray(data)
        bad[o] ^= 0x01
        (tmp_path / "bad.pt2").write_bytes(bytes(bad))
        with pytest.raises(ValueError):
            load_scorer(tmp_path / "bad.pt2")
    # the metadata of the α = 0.3 export put into the α = 0.1 archive (the rest kept as it is)
    with zipfile.ZipFile(tmp_path / "b.pt2") as z:
        other_meta = next(z.read(i) for i in z.infolist() if i.filename.endswith("conformood.json"))
    swapped = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(swapped, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info, other_meta if info.filename.endswith("conformood.json") else src.read(info))
    (tmp_path / "swapped.pt2").write_bytes(swapped.getvalue())
    with pytest.raises(ValueError, match="seal"):
        load_scorer(tmp_path / "swapped.pt2")


def test_an_empty_file_is_one_clear_error_without_torch_noise(tmp_path, capfd):
    (tmp_path / "empty.pt2").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load_scorer(tmp_path / "empty.pt2")
    (tmp_path / "junk.pt2").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    with pytest.raises(ValueError, match="seal"):
        load_scorer(tmp_path / "junk.pt2")
    assert capfd.readouterr().err == ""


def test_outputs_honour_the_umask(tmp_path):
    from conformood.io import write_json

    old = os.umask(0o022)
    try:
        _export("center", tmp_path / "s.pt2")
        write_json(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "s.pt2").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644
