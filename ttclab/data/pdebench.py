"""PDEBench HDF5 layouts: the only module that imports h5py.

Layouts (N trajectories, T snapshots, X[, Y] cells), float32:
    "fields": one dataset per primitive field, e.g. density, Vx, pressure: (N, T, *X)   (1D/2D CFD)
    "tensor": a single dataset `tensor`: (N, T, *X)                                 (1D Burgers)
plus `x-coordinate` (X), [`y-coordinate` (Y)] holding cell centres, `t-coordinate` and attributes
(PDEBench CFD: eta, zeta[, M], no gamma; Burgers: Nu). `t-coordinate` follows PDEBench: T + 1
entries for T frames, frame k at t[k]; files with exactly T entries (older ttclab) read too.
ttclab adds a group `ttclab/` with the IC splits and the train-only normalization; genuine
PDEBench files lack it and get both computed on the fly.

Every h5py access sits behind `_guard`, so a damaged file is a one-line DataError naming the file
and dataset, never an h5py traceback; values read are checked (finite, no all-zero snapshot,
positive fields > 0) before anything trains on them.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from ..errors import UserError
from ..problems.base import PDEProblem, Trajectories


class DataError(UserError, ValueError):
    """A data file that does not match the problem's layout; the message names the file and fix."""


AXES = ("x-coordinate", "y-coordinate", "z-coordinate")
UNIFORM_RTOL = 1e-3  # float32 centres on (-1, 1) with 1024 cells are uniform to ~6e-5 of dx


def _keys(problem: PDEProblem) -> list[str]:
    return ["tensor"] if problem.layout == "tensor" else list(problem.fields)


@contextmanager
def _guard(path: Path, what: str):
    """h5py raises OSError/RuntimeError/KeyError (from C, many lines) for damaged files: one line."""
    try:
        yield
    except (OSError, RuntimeError, KeyError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: cannot read {what} ({first}); the file is damaged, re-download or regenerate it") from None


def cell_grid(path: Path, key: str, centres: np.ndarray) -> tuple[float, float, float]:
    """Cell centres c_i = lo + (i + 1/2) dx -> (lo, hi, dx); refuses a non-uniform axis, since
    every integral (sum q dx) and the periodic solver assume one dx."""
    c = np.asarray(centres, dtype=np.float64).ravel()
    if c.size < 2:
        raise DataError(f"{path}: {key!r} has {c.size} entries; need the cell centres of at least 2 cells")
    dx = (c[-1] - c[0]) / (c.size - 1)
    worst = float(np.abs(np.diff(c) - dx).max())
    if not dx > 0 or worst > UNIFORM_RTOL * dx:
        raise DataError(f"{path}: {key!r} is not a uniform increasing grid (spacing varies by {worst:.3g} around "
                        f"dx={dx:.6g}); ttclab needs uniform periodic cells, resample the file")
    return c[0] - dx / 2, c[-1] + dx / 2, dx


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


def write_subset(src: str | Path, dst: str | Path, problem: PDEProblem, indices, meta: dict[str, np.ndarray]) -> Path:
    """The trajectories `indices` (increasing) of file `src`, unstrided, with its coordinates and
    attributes, written like `write` to `dst` with the ttclab group replaced by `meta`."""
    src, idx = Path(src), np.asarray(indices, dtype=np.int64)
    with PDEBenchFile(src, problem) as f, _guard(src, "the datasets to copy"):
        fields = np.stack([ds[idx] for ds in f._datasets], axis=2)
        coords = {k: f._file[k][()] for k in (*AXES[: problem.ndim], "t-coordinate")}
        traj = Trajectories(fields=fields, coords=coords, attrs=f.attrs)
    return write(dst, problem, traj, meta)


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
            with _guard(self.path, f"dataset {key!r}"):
                self._datasets.append(self._file[key])
        first = self._datasets[0]
        want = 2 + problem.ndim
        for key, ds in zip(_keys(problem), self._datasets):
            if ds.ndim != want or ds.shape != first.shape:
                raise DataError(
                    f"{self.path}: dataset {key!r} has shape {ds.shape}; expected (N, T, "
                    f"{', '.join('X Y Z'.split()[: problem.ndim])}) matching {first.shape}"
                )
        with _guard(self.path, "the file attributes"):
            self.attrs = dict(self._file.attrs)
        self.grid = [cell_grid(self.path, key, self._coordinate(key, n))
                     for key, n in zip(AXES, self.spatial_shape)]
        t = self._coordinate("t-coordinate")
        if t.size not in (self.n_snapshots, self.n_snapshots + 1):
            raise DataError(f"{self.path}: 't-coordinate' has {t.size} entries for {self.n_snapshots} frames; "
                            f"expected {self.n_snapshots + 1} (PDEBench) or {self.n_snapshots}")
        self.frame_times = t[: self.n_snapshots].astype(np.float64)

    def _coordinate(self, key: str, size: int | None = None) -> np.ndarray:
        if key not in self._file:
            raise DataError(f"{self.path}: missing dataset {key!r}; PDEBench files store the cell centres and "
                            f"frame times there, add them")
        with _guard(self.path, f"dataset {key!r}"):
            values = np.asarray(self._file[key][()]).ravel()
        if size is not None and values.size != size:
            raise DataError(f"{self.path}: {key!r} has {values.size} entries for {size} cells")
        return values

    @property
    def n_trajectories(self) -> int:
        return self._datasets[0].shape[0]

    @property
    def n_snapshots(self) -> int:
        return self._datasets[0].shape[1]

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self._datasets[0].shape[2:])

    @property
    def domain(self) -> list[tuple[float, float]]:
        """(lo, hi) per axis, from the cell centres."""
        return [(lo, hi) for lo, hi, _ in self.grid]

    @property
    def dx(self) -> tuple[float, ...]:
        return tuple(d for _, _, d in self.grid)

    def meta(self, key: str) -> np.ndarray | None:
        group = self._file.get("ttclab")
        if group is None or key not in group:
            return None
        with _guard(self.path, f"dataset 'ttclab/{key}'"):
            return group[key][()]

    def read(self, indices=None, t_stride: int = 1, x_stride: int = 1) -> np.ndarray:
        """-> (n, T', C, *X') float32 for the given trajectory indices, in any order and with repeats.
        h5py wants strictly increasing indices, so read each distinct trajectory once and expand."""
        idx = np.arange(self.n_trajectories) if indices is None else np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_trajectories):
            raise DataError(f"{self.path}: trajectory index out of range 0..{self.n_trajectories - 1}")
        distinct, inverse = np.unique(idx, return_inverse=True)
        where = (distinct, slice(None, None, t_stride)) + (slice(None, None, x_stride),) * self.problem.ndim
        fields = []
        for key, ds in zip(_keys(self.problem), self._datasets):
            with _guard(self.path, f"dataset {key!r}"):
                fields.append(ds[where])
        out = np.stack(fields, axis=2).astype(np.float32, copy=False)
        zero = ~(out != 0).reshape(*out.shape[:2], -1).any(-1)  # (n, T): snapshots zero in every field
        if zero.any():
            i, t = np.argwhere(zero)[0]
            raise DataError(f"{self.path}: trajectory {distinct[i]} frame {t * t_stride} is all zeros in every "
                            f"dataset (a zeroed block, e.g. an unfinished solve); drop it or regenerate the file")
        for key, values in zip(_keys(self.problem), fields):
            self._check_values(key, values, distinct, t_stride, x_stride)
        return out[inverse]

    def _check_values(self, key: str, values: np.ndarray, distinct, t_stride: int, x_stride: int) -> None:
        """Non-finite values, or a non-positive density/pressure, name the first bad file index."""
        bad = ~np.isfinite(values)
        what = "NaN/Inf"
        if not bad.any() and key in self.problem.positive:
            bad, what = values <= 0, "a non-positive value"
        if bad.any():
            i, t, *x = np.argwhere(bad)[0]
            index = (int(distinct[i]), int(t) * t_stride, *(int(c) * x_stride for c in x))
            raise DataError(f"{self.path}: dataset {key!r} holds {what} at index {index} (trajectory, frame, cell); "
                            f"drop that trajectory or regenerate the file")

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
