"""Feature sets and their feature-source records: read and written as ``.npz``, compared before scoring."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..._validation import check_binary_labels
from ...io import read_npz, write_npz

#: the fields of a feature-source record that must agree between calibration and scoring, in the order they
#: are compared (the first one that differs is named)
SOURCE_FIELDS = ("kind", "backbone", "model_sha256", "weights_digest", "input_size", "resize", "mean", "std",
                 "output", "patches")


class FeatureSourceWarning(UserWarning):
    """Features whose making cannot be compared with the detector's (no record on one side)."""


@dataclass
class Features:
    """The arrays of one source, with the names of the inputs and the record of how the features were made
    (``source``; None when the features came from outside conformood and nothing is recorded)."""

    features: np.ndarray | None
    labels: np.ndarray | None = None
    logits: np.ndarray | None = None
    is_inlier: np.ndarray | None = None
    names: list[str] | None = None
    source: dict | None = None
    origin: str = "the input"
    skipped: list[str] = field(default_factory=list)  # unreadable inputs left out on request, with the reason

    def __len__(self) -> int:
        arr = self.features if self.features is not None else self.logits
        return 0 if arr is None else len(arr)

    def inputs(self, kind: str = "features", detector: str = "the detector") -> np.ndarray:
        """The array a detector of input ``kind`` scores ("features", "patches" or "logits")."""
        if kind == "logits":
            if self.logits is None:
                raise ValueError(f"{detector} takes logits but {self.origin} has no 'logits' array")
            return self.logits
        if kind == "images":
            raise ValueError(f"{detector} needs an encoder and images; features of {self.origin} do not apply")
        if self.features is None:
            raise ValueError(f"{self.origin} has no 'features' array")
        return self.features

    def arrays(self) -> dict[str, np.ndarray]:
        """What :func:`write_features` stores."""
        out = {k: v for k, v in (("features", self.features), ("labels", self.labels), ("logits", self.logits),
                                 ("is_inlier", self.is_inlier)) if v is not None}
        if self.names is not None:
            out["names"] = np.array(self.names)
        if self.source is not None:
            out["feature_source"] = np.array(json.dumps(self.source, sort_keys=True))
        return out


# -- feature files -----------------------------------------------------------------------------------------
def read_features(path: str | os.PathLike, needs_ood: bool = False) -> Features:
    """Read a ``features`` / ``labels`` / ``logits`` / ``is_inlier`` npz file (no pickle; ``is_ood``, the former
    key, is read as its negation), with its ``names`` and ``feature_source`` record when it has them; or a
    ``.parquet`` file with the same columns (:func:`read_parquet_arrays`)."""
    path = Path(path)
    arrays = read_parquet_arrays(path) if path.suffix.lower() == ".parquet" else read_npz(path, what="features file")
    if "features" not in arrays and "logits" not in arrays:
        raise ValueError(f"{path} needs an array 'features' (n, d) or 'logits' (n, C); it has {sorted(arrays)}")
    n = len(arrays.get("features", arrays.get("logits")))
    out = Features(arrays.get("features"), arrays.get("labels"), arrays.get("logits"), origin=str(path))
    for key in ("labels", "logits"):
        value = getattr(out, key)
        if value is not None and len(value) != n:
            raise ValueError(f"{path}: '{key}' has {len(value)} rows but there are {n} samples")
    if "names" in arrays:
        names = arrays["names"]
        if names.shape != (n,) or names.dtype.kind != "U":
            raise ValueError(f"{path}: 'names' must be {n} strings")
        out.names = [str(s) for s in names]
    if "feature_source" in arrays:
        out.source = _parse_record(arrays["feature_source"], path)
    if needs_ood:
        if "is_inlier" in arrays and "is_ood" in arrays:
            raise ValueError(
                f"{path} holds both 'is_inlier' and 'is_ood'; keep one ('is_inlier', True = in-distribution)"
            )
        if "is_inlier" in arrays:
            out.is_inlier = check_binary_labels(arrays["is_inlier"], "is_inlier", n)
        elif "is_ood" in arrays:
            out.is_inlier = ~check_binary_labels(arrays["is_ood"], "is_ood", n)
        else:
            raise ValueError(f"{path} needs a boolean array 'is_inlier' (n,), True for the in-distribution samples")
    return out


#: the key of a parquet file's metadata that holds the feature-source record (JSON)
PARQUET_SOURCE_KEY = b"conformood.feature_source"


def read_parquet_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a parquet feature file: columns ``features`` and ``logits`` (lists of numbers of one length),
    ``labels`` and ``is_inlier`` / ``is_ood`` (numbers, booleans), ``names`` (strings), and the feature-source
    record under the metadata key :data:`PARQUET_SOURCE_KEY`. Needs pyarrow (``pip install conformood[ray]``)."""
    path = Path(path)
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("reading parquet needs pyarrow: pip install 'conformood[ray]'") from None
    if not path.is_file():
        raise FileNotFoundError(f"no features file at {path}")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds for a damaged file; one clear error
        raise ValueError(f"{path} is not a readable parquet file ({type(exc).__name__}: {exc})") from None
    out: dict[str, np.ndarray] = {}
    for name in table.column_names:
        column = table.column(name)
        if name in ("features", "logits"):
            out[name] = _list_column(column.combine_chunks(), f"{path}: '{name}'")
        elif name == "names":
            out[name] = np.asarray([str(v) for v in column.to_pylist()])
        elif column.null_count:
            raise ValueError(f"{path}: column '{name}' has {column.null_count} missing values")
        else:
            out[name] = column.to_numpy()
    metadata = table.schema.metadata or {}
    if PARQUET_SOURCE_KEY in metadata:
        out["feature_source"] = np.array(metadata[PARQUET_SOURCE_KEY].decode())
    return out


def _list_column(column: object, what: str) -> np.ndarray:
    """A parquet column of number lists of one length as an (n, d) array (float32 unless the values are wider)."""
    import pyarrow as pa

    kind = column.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)) or not (
            pa.types.is_floating(kind.value_type) or pa.types.is_integer(kind.value_type)):
        raise ValueError(f"{what} must hold lists of numbers, one per row; it holds {kind}")
    n = len(column)
    lengths = np.asarray(column.value_lengths().fill_null(-1))
    if column.null_count or (n and (lengths.min() != lengths.max() or lengths[0] < 1)):
        raise ValueError(f"{what}: every row must be a list of numbers of one length")
    values = np.asarray(column.flatten().to_numpy(zero_copy_only=False))
    if values.dtype.kind == "f" and values.dtype.itemsize <= 4 or values.dtype.kind in "iu":
        values = values.astype(np.float32)
    return values.reshape(n, int(lengths[0]) if n else 0)


def _parse_record(value: np.ndarray, path: Path) -> dict:
    try:
        record = json.loads(str(value))
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("kind"), str):
        raise ValueError(f"{path}: 'feature_source' is not a feature-source record")
    return record


def write_features(path: str | os.PathLike, features: Features, **extra: np.ndarray) -> Path:
    """Write ``features`` (and ``extra`` arrays) atomically as the npz that :func:`read_features` reads."""
    path = Path(path)
    write_npz(path, **features.arrays(), **extra)
    return path


def _describe(record: dict) -> str:
    if record.get("kind") == "backbone":
        return f"backbone {record.get('backbone')}"
    if record.get("kind") == "model":
        return f"model {record.get('model')}"
    return "features made outside conformood"


def check_feature_source(fitted: dict | None, given: dict | None, origin: str = "the inputs",
                         fitted_name: str = "the detector") -> None:
    """Refuse features made differently from those the detector was fitted and calibrated on: the first field
    of :data:`SOURCE_FIELDS` that differs is named with both values. When one side records nothing, the two
    cannot be compared: a :class:`FeatureSourceWarning` says so."""
    if fitted is None and given is None:
        return
    if fitted is None or given is None:
        if fitted is not None:
            warnings.warn(f"{fitted_name} has features of {_describe(fitted)} (input size "
                          f"{fitted.get('input_size')}); {origin} records no feature source, so their preprocessing "
                          "cannot be checked", FeatureSourceWarning, stacklevel=3)
        return
    for key in SOURCE_FIELDS:
        a, b = fitted.get(key), given.get(key)
        if a != b:
            raise ValueError(f"feature source mismatch in {key}: {fitted_name} has features of {_describe(fitted)} "
                             f"with {key} = {_show(key, a, fitted)}, {origin} has features of {_describe(given)} "
                             f"with {key} = {_show(key, b, given)}; make them the same way")


def _show(key: str, value: object, record: dict) -> str:
    if key == "weights_digest":
        label = record.get("weights")
        return f"{str(value)[:12]}… ({label or 'random'})" if value else f"none ({label or 'random initialisation'})"
    return json.dumps(value)


def same_source(records: Sequence[tuple[str, dict | None]]) -> dict | None:
    """The common record of several feature sets (training, calibration, test); a mismatch is refused by
    :func:`check_feature_source`, naming the sets."""
    (first_name, first), *rest = records
    for name, record in rest:
        if first is not None and record is not None:
            check_feature_source(first, record, name, fitted_name=first_name)
        elif (first is None) != (record is None):
            raise ValueError(f"{first_name if first is not None else name} records how its features were made but "
                             f"{name if first is not None else first_name} does not; extract every file the same way")
    return first
