"""Splits by initial condition, train-only normalization, and the tensors training and TTC consume.

One source of truth for physics: the project's problem config. A data file is checked against it
(`check_file`) wherever it is opened for use, and every mismatch is reported at once with the
`--set` that fixes it. problem.n_cells and problem.domain describe the grid the model sees (after
data.x_stride); problem.n_snapshots and problem.t_end describe the file (data.t_stride then picks
every k-th frame); constants (gamma, nu) must equal what the file's attributes state, and a
constant the file omits must be set explicitly (problem.required_physics).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import ConfigError
from ..problems.base import PDEProblem
from .pdebench import DataError, PDEBenchFile

REL_TOL = 1e-4  # float32 coordinates and attributes round to ~1e-7; a real mismatch is far larger


@dataclass
class DataConfig:
    path: str = ""  # an existing PDEBench-layout file; empty = generate one with the problem's solver
    n_trajectories: int = 300  # trajectories to generate, or the most to read from `path`
    seed: int = 0
    train: float = 0.7  # split fractions, by initial condition
    val: float = 0.15
    test: float = 0.15
    t_stride: int = 1
    x_stride: int = 1

    def validate(self):
        if min(self.train, self.val, self.test) < 0 or abs(self.train + self.val + self.test - 1) > 1e-6:
            raise ValueError("train + val + test fractions must be >= 0 and sum to 1")
        if self.t_stride < 1 or self.x_stride < 1:
            raise ValueError(f"t_stride={self.t_stride}, x_stride={self.x_stride}: strides must be >= 1 (1 = every frame/cell)")
        sizes = split_sizes(self.n_trajectories, self)
        if min(sizes.values()) < 1:
            raise ValueError(empty_split_message(self.n_trajectories, sizes))


SPLITS = ("train", "val", "test")


def split_sizes(n: int, cfg: DataConfig) -> dict[str, int]:
    n_train = int(round(cfg.train * n))
    n_val = min(int(round(cfg.val * n)), n - n_train)
    return {"train": n_train, "val": n_val, "test": n - n_train - n_val}


def empty_split_message(n: int, sizes: dict[str, int]) -> str:
    # An empty val split makes "best epoch" meaningless (it silently became epoch 1); an empty test
    # split leaves ttc nothing to evaluate.
    listed = ", ".join(f"{k} {v}" for k, v in sizes.items())
    return (f"{n} trajectories split into {listed}: every split needs >= 1 IC; raise data.n_trajectories "
            f"(e.g. --set data.n_trajectories=20) or change data.train/val/test")


def make_splits(n: int, cfg: DataConfig) -> dict[str, np.ndarray]:
    """Disjoint trajectory (IC) indices per split from a seeded permutation."""
    perm = np.random.default_rng(cfg.seed).permutation(n)
    sizes = split_sizes(n, cfg)
    n_train, n_val = sizes["train"], sizes["val"]
    return {
        "train": np.sort(perm[:n_train]),
        "val": np.sort(perm[n_train : n_train + n_val]),
        "test": np.sort(perm[n_train + n_val :]),
    }


def _close(a: float, b: float, scale: float) -> bool:
    return abs(a - b) <= REL_TOL * max(abs(scale), 1e-12)


def check_file(f: PDEBenchFile, problem: PDEProblem, cfg: DataConfig) -> dict:
    """Compare the file's grid, times and constants with the project's problem (module docstring);
    -> the file's values, for logging. Raises one DataError listing every mismatch and its fix."""
    path, pcfg = f.path, problem.cfg
    for n in f.spatial_shape:
        if n % cfg.x_stride:
            raise DataError(f"{path}: data.x_stride={cfg.x_stride} does not divide the file's {n} cells, so the "
                            f"strided periodic grid would not be uniform; use a divisor of {n}")
    grid = tuple(n // cfg.x_stride for n in f.spatial_shape)
    (lo, hi), *others = f.domain
    if len(set(grid)) > 1 or not all(_close(a, lo, hi - lo) and _close(b, hi, hi - lo) for a, b in others):
        raise DataError(f"{path}: grid {f.spatial_shape} on {f.domain} is not square; ttclab's problems use "
                        f"one n_cells and domain for every axis")
    found = {"n_cells": grid[0], "domain": [float(f"{lo:.6g}"), float(f"{hi:.6g}")],
             "n_snapshots": f.n_snapshots, "t_end": float(f"{f.frame_times[-1] - f.frame_times[0]:.6g}"),
             **problem.file_physics(f.attrs)}
    ours = {**problem.physics(), "n_snapshots": pcfg.n_snapshots, "t_end": pcfg.t_end}
    wrong = []
    for key, value in found.items():
        have = ours[key]
        if key == "domain":
            same = all(_close(a, b, hi - lo) for a, b in zip(have, (lo, hi)))
        elif isinstance(value, int):
            same = have == value
        else:
            same = _close(have, value, value)
        if not same:
            wrong.append((key, have, value))
    missing = [(k, hint) for k, hint in problem.required_physics.items()
               if k not in found and getattr(pcfg, k) is None]
    if wrong or missing:
        parts = [f"problem.{k}={_show(have)} but the file has {_show(v)}" for k, have, v in wrong]
        parts += [f"the file states no {k} and problem.{k} is unset ({why})" for k, (_, why) in missing]
        fixes = [f"--set problem.{k}={_show(v)}" for k, _, v in wrong] + [f"--set problem.{k}={v}" for k, (v, _) in missing]
        raise DataError(f"{path}: {'; '.join(parts)}; fix: {' '.join(fixes)}")
    return found | {"dx": f.dx[0] * cfg.x_stride}


def _show(value) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def channel_stats(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean/std over (N, T, *X) of u (N, T, C, *X)."""
    axes = tuple(i for i in range(u.ndim) if i != 2)
    return u.mean(axis=axes), u.std(axis=axes) + 1e-6


class Normalizer(torch.nn.Module):
    """u_n = (u - mean) / std per channel; stored in checkpoints next to the weights."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean), dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(np.asarray(std), dtype=torch.float32))

    def _view(self, t: torch.Tensor, ndim: int) -> torch.Tensor:
        return t.view(-1, *[1] * ndim)

    def encode(self, u: torch.Tensor, ndim: int) -> torch.Tensor:
        return (u - self._view(self.mean, ndim)) / self._view(self.std, ndim)

    def decode(self, u: torch.Tensor, ndim: int) -> torch.Tensor:
        return u * self._view(self.std, ndim) + self._view(self.mean, ndim)


class SplitData:
    """The trajectories of one data file, by split, in physical units: (N, T, C, *X) tensors."""

    def __init__(self, path, problem: PDEProblem, cfg: DataConfig):
        with PDEBenchFile(path, problem) as f:
            # The problem's grid spacing feeds every conserved total (ARM, drift metrics), so the
            # grid read from the file must be the problem's grid.
            self.file_physics = check_file(f, problem, cfg)
            n = min(f.n_trajectories, cfg.n_trajectories)
            stored = {s: f.meta(f"split_{s}") for s in SPLITS}
            if all(v is not None for v in stored.values()):
                self.indices = {s: v[v < n] for s, v in stored.items()}
            else:
                self.indices = make_splits(n, cfg)
            sizes = {s: len(v) for s, v in self.indices.items()}
            if min(sizes.values()) < 1:
                raise ConfigError(f"{path}: {empty_split_message(n, sizes)}")
            self.trajectories = {s: torch.from_numpy(f.read(i, cfg.t_stride, cfg.x_stride))
                                 for s, i in self.indices.items()}
            mean, std = f.meta("norm_mean"), f.meta("norm_std")
        if mean is None:
            mean, std = channel_stats(self.trajectories["train"].numpy())
        if len(mean) != problem.n_fields:
            raise DataError(f"{path}: normalization has {len(mean)} channels, problem has {problem.n_fields}")
        self.normalizer = Normalizer(mean, std)
        self.path = path

    def __getitem__(self, split: str) -> torch.Tensor:
        return self.trajectories[split]

    def pairs(self, split: str, unroll: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows of one state and the `unroll` states after it: (M, C, *X), (M, unroll, C, *X)."""
        u = self.trajectories[split]
        t = u.shape[1]
        if t <= unroll:
            raise DataError(f"{self.path}: {t} snapshots cannot give {unroll}-step training windows")
        starts = range(t - unroll)
        inputs = torch.cat([u[:, s] for s in starts])
        targets = torch.cat([u[:, s + 1 : s + 1 + unroll] for s in starts])
        return inputs, targets
