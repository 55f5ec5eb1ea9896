"""Viscous Burgers equation on a periodic interval (PDEBench's 1D Burgers layout, domain (0, 1)):
    u_t + (u^2 / 2)_x = nu u_xx.
PDEBench files store the attribute `Nu`, and its solver diffuses with Nu / pi (its flux adds
-(Nu / pi) u_x, i.e. u_t + (u^2/2)_x = (Nu / pi) u_xx): so nu = Nu / pi here, and files we write
carry Nu = pi * nu. A file's 1D_Burgers_Sols_Nu0.01 therefore means nu = 0.01 / pi ~ 0.00318.
Finite volumes: MUSCL + HLL (Rusanov-like for a scalar) for the convective flux, a central
difference for the viscous flux, SSP-RK3 with dt limited by CFL and by the diffusion number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ..progress import progress_bar
from . import PROBLEMS
from .base import PDEProblem, Trajectories, coordinates, frame_times, random_smooth, validate_domain
from .fv import flux_divergence, hll, integrate, muscl_faces


@dataclass
class BurgersConfig:
    type: str = "burgers1d"
    n_cells: int = 128
    n_snapshots: int = 51
    t_end: float = 1.0
    nu: float = 0.01
    cfl: float = 0.4
    limiter: Literal["minmod", "mc"] = "minmod"
    k_max: int = 4
    amp: float = 1.0
    domain: tuple[float, ...] = (0.0, 1.0)  # [lo, hi] of the periodic interval

    def validate(self):
        if self.nu < 0 or self.n_cells < 8 or self.n_snapshots < 2 or self.t_end <= 0:
            raise ValueError("need nu >= 0, n_cells >= 8, n_snapshots >= 2, t_end > 0")
        validate_domain(self.domain)


@PROBLEMS.register("burgers1d")
class Burgers1d(PDEProblem):
    Config = BurgersConfig
    name = "burgers1d"
    fields = ("u",)
    layout = "tensor"

    @property
    def shape(self):
        return (self.cfg.n_cells,)

    def physics(self):
        return {**super().physics(), "nu": self.cfg.nu}

    def file_physics(self, attrs):
        if "Nu" in attrs:
            return {"nu": float(attrs["Nu"]) / math.pi}
        return {"nu": float(attrs["nu"])} if "nu" in attrs else {}

    def densities(self, u):
        return {"mass": u.select(-2, 0)}

    def project_conserved(self, u, target, counts=None):
        """A constant shift of u is the L2-closest state with the target mass (never refused)."""
        now = self.conserved(u)["mass"]
        shift = (target["mass"] - now) / (self.cell_volume * self.cfg.n_cells)
        if counts is not None:
            counts["projected"] = counts.get("projected", 0) + now.numel()
        return u + shift.view(*shift.shape, 1, 1)

    def rhs(self, u):
        dx = self.dx[0]
        ul, ur = muscl_faces(u, 0, self.cfg.limiter)
        speed = torch.maximum(ul.abs(), ur.abs())[:, 0]
        convective = hll(ul, ur, 0.5 * ul**2, 0.5 * ur**2, -speed, speed)
        viscous = -self.cfg.nu * (u.roll(-1, dims=2) - u) / dx  # diffusive flux at face i+1/2
        return flux_divergence(convective + viscous, 0, dx)

    def max_dt(self, u):
        dx = self.dx[0]
        dt = self.cfg.cfl * dx / max(float(u.abs().max()), 1e-6)
        if self.cfg.nu > 0:
            dt = min(dt, 0.4 * dx * dx / self.cfg.nu)
        return dt

    def solve(self, n, seed, progress=None):
        gen = torch.Generator().manual_seed(seed)
        u0 = (self.cfg.amp * random_smooth(gen, n, self.shape, self.cfg.k_max)).unsqueeze(1)
        times = torch.linspace(0.0, self.cfg.t_end, self.cfg.n_snapshots, dtype=torch.float64)
        with progress_bar(len(times) - 1, "burgers1d solver", disable=progress is False, leave=False) as bar:
            u = integrate(u0, times, self.rhs, self.max_dt, progress=bar.update)
        coords = coordinates(self)
        coords["t-coordinate"] = frame_times(self.cfg.t_end, self.cfg.n_snapshots)
        attrs = {"Nu": math.pi * self.cfg.nu, "dt": self.cfg.t_end / (self.cfg.n_snapshots - 1), "seed": seed,
                 "dx": self.dx[0], "solver": f"MUSCL-{self.cfg.limiter} + HLL + central viscous + SSP-RK3",
                 "boundary": self.boundary}
        return Trajectories(u.to(torch.float32).numpy(), coords, attrs)
