"""The data a run read, as an MLflow dataset input: what fills the runs table's Dataset column.

A data file becomes a metadata-only MLflow dataset (nothing is copied): its name (file stem and
split), a digest of its bytes (sha256, first 20 hex digits, so two runs on byte-identical files show
the same digest whatever their path), its source URI, and a schema of every HDF5 array (name, dtype,
shape). The input's tags say the split and whether the run trained on it or evaluated on it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import numpy as np
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.entities import DatasetInput, InputTag
from mlflow.types import Schema, TensorSpec

CONTEXTS = ("training", "evaluation")
_DIGESTS: dict[tuple, str] = {}  # (path, size, mtime) -> digest: a file is hashed once per process


def digest(path: Path) -> str:
    """sha256 of the file's bytes, read in 1 MiB chunks, first 20 hex digits."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()[:20]
    return _DIGESTS[key]


def schema(path: Path) -> Schema:
    """One tensor spec per HDF5 array, named by its path in the file."""
    specs = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "biuf":
            specs.append(TensorSpec(np.dtype(obj.dtype), tuple(obj.shape), name))

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return Schema(specs)


def dataset_input(path: str | Path, split: str, context: str) -> DatasetInput:
    """The MLflow dataset input for `split` of the data file at `path`, read for `context`."""
    if context not in CONTEXTS:
        raise ValueError(f"dataset context {context!r}: one of {CONTEXTS}")
    path = Path(path)
    ds = MetaDataset(LocalArtifactDatasetSource(path.resolve().as_uri()), name=f"{path.stem}-{split}",
                     digest=digest(path), schema=schema(path))
    tags = [InputTag("mlflow.data.context", context), InputTag("ttclab.split", split)]
    return DatasetInput(ds._to_mlflow_entity(), tags)
