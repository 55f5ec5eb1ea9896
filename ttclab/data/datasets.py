"""Splits by initial condition, train-only normalization, and the tensors training and TTC consume."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..problems.base import PDEProblem
from .pdebench import DataError, PDEBenchFile


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
        if self.n_trajectories < 3:
            raise ValueError("n_trajectories must be >= 3 (one IC per split at least)")


SPLITS = ("train", "val", "test")


def make_splits(n: int, cfg: DataConfig) -> dict[str, np.ndarray]:
    """Disjoint trajectory (IC) indices per split from a seeded permutation."""
    perm = np.random.default_rng(cfg.seed).permutation(n)
    n_train = int(round(cfg.train * n))
    n_val = int(round(cfg.val * n))
    return {
        "train": np.sort(perm[:n_train]),
        "val": np.sort(perm[n_train : n_train + n_val]),
        "test": np.sort(perm[n_train + n_val :]),
    }


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
            grid = tuple(-(-m // cfg.x_stride) for m in f.spatial_shape)
            if grid != tuple(problem.shape):
                raise DataError(
                    f"{path}: grid {f.spatial_shape} read with x_stride {cfg.x_stride} gives {grid} cells, but the "
                    f"problem is configured for {tuple(problem.shape)}; set problem.n_cells={grid[0]} (or change data.x_stride)"
                )
            n = min(f.n_trajectories, cfg.n_trajectories)
            stored = {s: f.meta(f"split_{s}") for s in SPLITS}
            if all(v is not None for v in stored.values()):
                self.indices = {s: v[v < n] for s, v in stored.items()}
            else:
                self.indices = make_splits(n, cfg)
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
