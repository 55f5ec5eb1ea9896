"""PDEBench HDF5 layouts: the only module that imports h5py.

Layouts (N trajectories, T snapshots, X[, Y] cells), float32:
    "fields": one dataset per primitive field, e.g. density, Vx, pressure: (N, T, *X)   (1D/2D CFD)
    "tensor": a single dataset `tensor`: (N, T, *X)                                 (1D Burgers)
plus `x-coordinate` (X), [`y-coordinate` (Y)], `t-coordinate` and attributes. ttclab adds a group
`ttclab/` with the IC splits and the train-only normalization; genuine PDEBench files lack it and
get both computed on the fly.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from ..errors import UserError
from ..problems.base import PDEProblem, Trajectories


class DataError(UserError, ValueError):
    """A data file that does not match the problem's layout; the message names the file and fix."""


def _keys(problem: PDEProblem) -> list[str]:
    return ["tensor"] if problem.layout == "tensor" else list(problem.fields)


def write(path: str | Path, problem: PDEProblem, traj: Trajectories, meta: dict[str, np.ndarray]) -> Path:
    """Write atomically: a temp file in the same folder, renamed only once complete, so an interrupted
    write never leaves a file a later stage would accept."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            n, t = traj.fields.shape[:2]
            chunk = (1, t, *problem.shape)
            for c, key in enumerate(_keys(problem)):
                f.create_dataset(key, data=traj.fields[:, :, c], chunks=chunk, compression="lzf")
            for key, values in traj.coords.items():
                f.create_dataset(key, data=values)
            for key, value in traj.attrs.items():
                f.attrs[key] = value
            f.attrs["problem"] = problem.name
            group = f.create_group("ttclab")
            for key, value in meta.items():
                group.create_dataset(key, data=value)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


class PDEBenchFile:
    """Lazy reader: validates the layout on open, reads only the trajectories asked for."""

    def __init__(self, path: str | Path, problem: PDEProblem):
        self.path = Path(path)
        self.problem = problem
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such data file; run `ttclab generate` or fix data.path")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as err:
            raise DataError(f"{self.path}: not a readable HDF5 file ({err}); regenerate it") from None
        self._datasets = []
        for key in _keys(problem):
            if key not in self._file:
                found = ", ".join(k for k in self._file.keys() if k != "ttclab")
                raise DataError(
                    f"{self.path}: missing dataset {key!r} required by problem {problem.name!r} "
                    f"(found: {found}); point data.path at a {problem.name} file in PDEBench layout"
                )
            self._datasets.append(self._file[key])
        first = self._datasets[0]
        want = 2 + problem.ndim
        for key, ds in zip(_keys(problem), self._datasets):
            if ds.ndim != want or ds.shape != first.shape:
                raise DataError(
                    f"{self.path}: dataset {key!r} has shape {ds.shape}; expected (N, T, "
                    f"{', '.join('X Y Z'.split()[: problem.ndim])}) matching {first.shape}"
                )

    @property
    def n_trajectories(self) -> int:
        return self._datasets[0].shape[0]

    @property
    def n_snapshots(self) -> int:
        return self._datasets[0].shape[1]

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self._datasets[0].shape[2:])

    def meta(self, key: str) -> np.ndarray | None:
        group = self._file.get("ttclab")
        return None if group is None or key not in group else group[key][()]

    def read(self, indices=None, t_stride: int = 1, x_stride: int = 1) -> np.ndarray:
        """-> (n, T', C, *X') float32 for the given trajectory indices, in any order and with repeats.
        h5py wants strictly increasing indices, so read each distinct trajectory once and expand."""
        idx = np.arange(self.n_trajectories) if indices is None else np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_trajectories):
            raise DataError(f"{self.path}: trajectory index out of range 0..{self.n_trajectories - 1}")
        distinct, inverse = np.unique(idx, return_inverse=True)
        space = (slice(None, None, x_stride),) * self.problem.ndim
        fields = [ds[distinct, ::t_stride, *space] for ds in self._datasets]
        return np.stack(fields, axis=2).astype(np.float32, copy=False)[inverse]

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_triplets(path: str | Path, arrays: dict[str, np.ndarray], attrs: dict | None = None) -> Path:
    """PRM training triplets (and any per-state arrays) as one flat HDF5 group, written atomically
    like `write`. Arrays are stored as given; `attrs` holds scalars such as K and the sampler."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            for key, value in arrays.items():
                value = np.asarray(value)
                big = value.ndim > 1 and value.size > 4096  # compress the field arrays, not the indices
                f.create_dataset(key, data=value, compression="lzf" if big else None)
            for key, value in (attrs or {}).items():
                f.attrs[key] = value
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_triplets(path: str | Path, keys: tuple[str, ...] = ()) -> dict:
    """-> {name: array} for every dataset (and `attrs` for the file attributes). A key in `keys` that
    the file lacks raises DataError naming the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such triplet file; run `ttclab build_prm` or fix the URI")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise DataError(f"{path}: not a readable HDF5 file ({err}); rebuild it with `ttclab build_prm`") from None
    with f:
        missing = [k for k in keys if k not in f]
        if missing:
            raise DataError(f"{path}: missing dataset {missing[0]!r} (found: {', '.join(f.keys())}); "
                            f"rebuild it with `ttclab build_prm`")
        out = {k: f[k][()] for k in f.keys()}
        out["attrs"] = dict(f.attrs)
    return out
