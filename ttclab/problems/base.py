"""What every PDE problem declares, so later stages read physics from here, never from channel indices.

A state is a tensor (..., C, *X) of the problem's `fields` (PDEBench's primitive variables, in the
order of its HDF5 keys) on a uniform periodic grid of cell centres over `domain` = (lo, hi) per axis:
    x_i = lo + (i + 1/2) dx,   dx = (hi - lo) / n_cells.
Conserved quantities are domain integrals of densities q(x):
    Q = sum_x q(x) * dV,   dV = prod(dx).
The domain is a problem config key (default (0, 1); PDEBench 1D_CFD uses (-1, 1)), so the extent
travels with the config into params, keys and checkpoints; a data file's coordinates are checked
against it (data/datasets.py `check_file`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Trajectories:
    """Solver output: fields (N, T, C, *X) float32 plus coordinates and attributes for the HDF5 file."""

    fields: np.ndarray
    coords: dict[str, np.ndarray]  # "x-coordinate", ("y-coordinate"), "t-coordinate"
    attrs: dict


class PDEProblem:
    """Base class; subclasses set the class attributes and implement `densities` and `solve`."""

    Config: type
    name: str
    fields: tuple[str, ...]  # channel names == PDEBench dataset keys (except single-field layouts)
    layout: str = "fields"  # "fields": one dataset per field; "tensor": one dataset named `tensor`
    positive: tuple[str, ...] = ()  # fields that must stay > 0 (density, pressure)
    boundary: str = "periodic"
    ndim: int = 1
    # Constants a data file may omit that the project must then set explicitly: key -> (suggested
    # value, why), e.g. {"gamma": ("1.6667", "PDEBench's CFD data uses 5/3")}.
    required_physics: dict[str, tuple[str, str]] = {}

    def __init__(self, cfg):
        self.cfg = cfg

    @property
    def shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    @property
    def extent(self) -> tuple[float, ...]:
        lo, hi = self.cfg.domain
        return (hi - lo,) * self.ndim

    @property
    def dx(self) -> tuple[float, ...]:
        return tuple(L / n for L, n in zip(self.extent, self.shape))

    @property
    def cell_volume(self) -> float:
        return math.prod(self.dx)

    def cell_centres(self, axis: int = 0) -> np.ndarray:
        """x_i = lo + (i + 1/2) dx along `axis`: what `x-coordinate` stores and figures plot against."""
        return self.cfg.domain[0] + (np.arange(self.shape[axis]) + 0.5) * self.dx[axis]

    def physics(self) -> dict:
        """The values a state's meaning depends on (grid, domain, constants): an operator checkpoint
        and a data file must agree with the project on every one. Subclasses add their constants."""
        return {"n_cells": self.shape[0], "domain": tuple(self.cfg.domain)}

    def file_physics(self, attrs: dict) -> dict:
        """The constants of `physics()` that a data file's attributes state (PDEBench's names mapped
        to ours); {} when the file states none."""
        return {}

    @property
    def n_fields(self) -> int:
        return len(self.fields)

    def channel(self, field: str) -> int:
        return self.fields.index(field)

    def densities(self, u: torch.Tensor) -> dict[str, torch.Tensor]:
        """u (..., C, *X) -> {quantity: q (..., *X)} for each conserved quantity."""
        raise NotImplementedError

    def conserved(self, u: torch.Tensor) -> dict[str, torch.Tensor]:
        """u (..., C, *X) -> {quantity: Q (...)}: domain integrals in physical units."""
        dims = tuple(range(-self.ndim, 0))
        return {k: q.sum(dim=dims) * self.cell_volume for k, q in self.densities(u).items()}

    def conserved_scale(self, u: torch.Tensor) -> dict[str, torch.Tensor]:
        """Integral of |q|: a magnitude to divide drifts by, finite even when Q itself is ~0
        (total momentum of a random IC is often near zero)."""
        dims = tuple(range(-self.ndim, 0))
        return {k: q.abs().sum(dim=dims) * self.cell_volume for k, q in self.densities(u).items()}

    def boundary_violation(self, u: torch.Tensor) -> torch.Tensor:
        """u (..., C, *X) -> (...): how far u breaks the boundary conditions. A periodic grid has no
        boundary to break; problems with Dirichlet/Neumann walls override this."""
        return u.new_zeros(u.shape[: u.ndim - self.ndim - 1])

    def solve(self, n: int, seed: int, progress=None) -> Trajectories:
        """Generate n trajectories from random initial conditions (vectorized over trajectories)."""
        raise NotImplementedError

    def project_conserved(self, u: torch.Tensor, target: dict[str, torch.Tensor],
                          counts: dict | None = None) -> torch.Tensor:
        """Correct u (..., C, *X) so its conserved totals equal `target` (each (...)); problems without
        a closed-form correction return u unchanged. `counts`, if given, accumulates per state
        "projected" (all), "partial" (only part of the correction was admissible) and "refused"
        (none was), so a search can log how often the projection really acted."""
        return u


def physics_mismatch(have: PDEProblem, want: PDEProblem) -> list[tuple[str, object, object]]:
    """(key, have, want) for every `physics()` value on which two problems differ: an operator
    trained under one set of physics must not silently run under another."""
    a, b = have.physics(), want.physics()
    return [(k, a[k], b.get(k)) for k in a if not np.allclose(a[k], b.get(k, np.nan), rtol=1e-9, atol=0)]


def validate_domain(domain) -> None:
    if len(domain) != 2 or not domain[1] > domain[0]:
        raise ValueError(f"domain must be [lo, hi] with hi > lo, got {list(domain)}")


def coordinates(problem: PDEProblem) -> dict[str, np.ndarray]:
    names = ["x-coordinate", "y-coordinate", "z-coordinate"]
    return {names[a]: problem.cell_centres(a).astype(np.float32) for a in range(problem.ndim)}


def frame_times(t_end: float, n_snapshots: int) -> np.ndarray:
    """PDEBench's `t-coordinate`: T + 1 entries k * dt for T frames (frame k at t[k]; the last entry
    is one save interval past the last frame), so files we write read like theirs."""
    dt = t_end / (n_snapshots - 1)
    return (np.arange(n_snapshots + 1) * dt).astype(np.float32)


def random_smooth(gen: torch.Generator, n: int, shape: tuple[int, ...], k_max: int) -> torch.Tensor:
    """Sum of random Fourier modes on the unit periodic box, scaled to max |f| = 1; (n, *X) float64.

    In the spirit of PDEBench's "Rand" initial conditions: a few low wavenumbers with random
    amplitudes and phases."""
    grids = torch.meshgrid(*[(torch.arange(m, dtype=torch.float64) + 0.5) / m for m in shape], indexing="ij")
    f = torch.zeros(n, *shape, dtype=torch.float64)
    for _ in range(2 * len(shape) + 2):
        k = torch.randint(1, k_max + 1, (n, len(shape)), generator=gen).to(torch.float64)
        k = k * (torch.rand(n, len(shape), generator=gen, dtype=torch.float64) < 0.7)  # some axes flat
        amp = torch.rand(n, generator=gen, dtype=torch.float64)
        phase = 2 * math.pi * torch.rand(n, generator=gen, dtype=torch.float64)
        arg = sum(k[:, a].view(-1, *[1] * len(shape)) * grids[a] for a in range(len(shape)))
        f = f + amp.view(-1, *[1] * len(shape)) * torch.sin(2 * math.pi * arg + phase.view(-1, *[1] * len(shape)))
    peak = f.flatten(1).abs().amax(dim=1).clamp_min(1e-12)
    return f / peak.view(-1, *[1] * len(shape))
