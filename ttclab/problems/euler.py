"""Compressible Euler equations of an ideal gas on a periodic box, in 1D and 2D.

Primitive fields W = (rho, v_1..v_d, p) are what PDEBench stores; the solver advances the
conservative U = (rho, m = rho v, E = p / (gamma - 1) + rho |v|^2 / 2):
    dU/dt + sum_a dF_a(U)/dx_a = 0,   F_a = (rho v_a, m v_a + p e_a, (E + p) v_a).
Finite volumes: MUSCL reconstruction of W with a TVD limiter, HLL flux, SSP-RK3, CFL time step.

gamma: unset (None) means 1.4 for data we generate; PDEBench's CFD files store no gamma (their
data uses 5/3), so a project reading one must set problem.gamma explicitly (`required_physics`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..progress import progress_bar
from . import PROBLEMS
from .base import PDEProblem, Trajectories, coordinates, frame_times, random_smooth, validate_domain
from .fv import flux_divergence, hll, integrate, muscl_faces


@dataclass
class EulerConfig:
    type: str = "euler1d"
    n_cells: int = 128  # per axis
    n_snapshots: int = 51  # including t = 0
    t_end: float = 0.4
    gamma: float | None = None  # None: DEFAULT_GAMMA for generated data; required for external files
    cfl: float = 0.4
    limiter: Literal["minmod", "mc"] = "minmod"
    ic: Literal["smooth", "riemann", "blast"] = "smooth"  # initial-condition family (see initial_conditions)
    k_max: int = 4  # highest wavenumber of the smooth initial conditions
    pieces: int = 2  # riemann: constant states per axis (periodic: as many discontinuities per axis)
    blast_ratio: float = 10.0  # blast: pressure inside the pulse / outside
    blast_width: float = 0.1  # blast: largest pulse half-width, as a fraction of the box
    rho_base: float = 1.0
    rho_amp: float = 0.5  # relative amplitude, < 1 keeps density positive
    p_base: float = 1.0
    p_amp: float = 0.5
    v_amp: float = 0.5
    domain: tuple[float, ...] = (0.0, 1.0)  # [lo, hi] of the periodic box, every axis

    def validate(self):
        if not (0 <= self.rho_amp < 1 and 0 <= self.p_amp < 1):
            raise ValueError("rho_amp and p_amp must lie in [0, 1) so density and pressure stay positive")
        if self.n_cells < 8 or self.n_snapshots < 2 or self.t_end <= 0 or not 0 < self.cfl <= 1:
            raise ValueError("need n_cells >= 8, n_snapshots >= 2, t_end > 0 and 0 < cfl <= 1")
        if self.ic not in ("smooth", "riemann", "blast"):
            raise ValueError(f"problem.ic must be smooth, riemann or blast, got {self.ic!r}")
        if self.pieces < 2 or self.blast_ratio <= 0 or not 0 < self.blast_width < 0.5:
            raise ValueError("need pieces >= 2, blast_ratio > 0 and 0 < blast_width < 0.5")
        if self.gamma is not None and not self.gamma > 1:
            raise ValueError(f"gamma must be > 1 (ideal gas), got {self.gamma}")
        validate_domain(self.domain)


DEFAULT_GAMMA = 1.4
BISECTIONS = 20  # admissible-fraction search of the projection: theta to 1e-6


class Euler(PDEProblem):
    positive = ("density", "pressure")
    required_physics = {"gamma": ("1.6667", "PDEBench's CFD data uses 5/3")}

    @property
    def shape(self):
        return (self.cfg.n_cells,) * self.ndim

    @property
    def gamma(self) -> float:
        return DEFAULT_GAMMA if self.cfg.gamma is None else self.cfg.gamma

    def physics(self):
        return {**super().physics(), "gamma": self.gamma}

    def file_physics(self, attrs):
        return {"gamma": float(attrs["gamma"])} if "gamma" in attrs else {}

    def to_conservative(self, w: torch.Tensor) -> torch.Tensor:
        """W (..., C, *X) -> U with channels (rho, m_1..m_d, E)."""
        d, c = self.ndim, -self.ndim - 1
        rho, v, p = w.narrow(c, 0, 1), w.narrow(c, 1, d), w.narrow(c, 1 + d, 1)
        kinetic = 0.5 * rho * (v * v).sum(dim=c, keepdim=True)
        return torch.cat([rho, rho * v, p / (self.gamma - 1) + kinetic], dim=c)

    def to_primitive(self, u: torch.Tensor) -> torch.Tensor:
        d, c = self.ndim, -self.ndim - 1
        rho, m, energy = u.narrow(c, 0, 1), u.narrow(c, 1, d), u.narrow(c, 1 + d, 1)
        v = m / rho
        p = (self.gamma - 1) * (energy - 0.5 * (m * v).sum(dim=c, keepdim=True))
        return torch.cat([rho, v, p], dim=c)

    def densities(self, w):
        u = self.to_conservative(w)
        c = -self.ndim - 1
        out = {"mass": u.select(c, 0)}
        names = ["momentum"] if self.ndim == 1 else ["momentum_x", "momentum_y", "momentum_z"][: self.ndim]
        for a, name in enumerate(names):
            out[name] = u.select(c, 1 + a)
        out["energy"] = u.select(c, 1 + self.ndim)
        return out

    def project_conserved(self, w, target, counts=None):
        """Shift the conservative U = (rho, m, E) by a constant s_k per channel, the L2-closest
        correction with the target totals: s_k = (Q*_k - Q_k) / |Omega|. Then convert back.

        Positivity: A = {rho > rho_floor, p > p_floor} is convex in U (p > c <=> E > |m|^2 / (2 rho)
        + c / (gamma - 1), the epigraph of a function jointly convex for rho > 0), so the admissible
        fractions theta of the shift, U + theta s in A, form an interval [0, theta_max). The floors
        are half the candidate's own minima (a correction may at most halve its smallest density or
        pressure). theta = 1 when the full shift is admissible; else the largest admissible theta
        by bisection (a partial projection: totals move toward the target); theta = 0 (refused:
        the state is returned unchanged) when the candidate itself is not positive."""
        nd, c = self.ndim, -self.ndim - 1
        u = self.to_conservative(w)
        now = self.conserved(w)
        volume = self.cell_volume * float(np.prod(self.shape))
        lead = u.shape[: u.ndim - nd - 1]
        shift = torch.stack([(target[k] - now[k]) / volume for k in self.densities(w)], dim=-1)
        shift = shift.view(*lead, -1, *[1] * nd)
        floors = [0.5 * w.select(c, i).flatten(-nd).amin(-1).clamp_min(0) for i in (0, self.n_fields - 1)]

        def admissible(theta):  # (lead) -> (lead) bool: U + theta s keeps rho and p above the floors
            v = self.to_primitive(u + theta.view(*lead, 1, *[1] * nd) * shift)
            ok = [(v.select(c, i).flatten(-nd) > f.unsqueeze(-1)).all(-1) for i, f in zip((0, self.n_fields - 1), floors)]
            return ok[0] & ok[1]

        one = u.new_ones(lead)
        theta = torch.where(admissible(one), one, torch.zeros_like(one))
        todo = (theta < 1) & admissible(torch.zeros_like(one))
        if todo.any():
            lo, hi = torch.zeros_like(one), one.clone()
            for _ in range(BISECTIONS):
                mid = 0.5 * (lo + hi)
                ok = admissible(mid)
                lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
            theta = torch.where(todo, lo, theta)
        if counts is not None:
            for key, n in (("projected", theta.numel()), ("partial", ((theta > 0) & (theta < 1)).sum()),
                           ("refused", (theta == 0).sum())):
                counts[key] = counts.get(key, 0) + int(n)
        projected = self.to_primitive(u + theta.view(*lead, 1, *[1] * nd) * shift)
        return torch.where((theta > 0).view(*lead, 1, *[1] * nd), projected, w)

    def _flux(self, w: torch.Tensor, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Physical flux F_a(U) and conservative U from primitive face states (..., C, *X)."""
        d, c = self.ndim, -self.ndim - 1
        u = self.to_conservative(w)
        v_a, p = w.narrow(c, 1 + axis, 1), w.narrow(c, 1 + d, 1)
        f = u * v_a
        f.narrow(c, 1 + axis, 1).add_(p)
        f.narrow(c, 1 + d, 1).add_(p * v_a)
        return f, u

    def _sound(self, w: torch.Tensor) -> torch.Tensor:
        """Sound speed (..., *X) of primitive states (..., C, *X)."""
        c = -self.ndim - 1
        return (self.gamma * w.select(c, 1 + self.ndim).clamp_min(1e-12)).div_(w.select(c, 0).clamp_min(1e-12)).sqrt_()

    def rhs(self, u: torch.Tensor) -> torch.Tensor:
        w = self.to_primitive(u)
        total = None
        for axis in range(self.ndim):
            faces = muscl_faces(w, axis, self.cfg.limiter)  # (2, B, C, *X): both sides in one op each
            f, cons = self._flux(faces, axis)
            v, sound = faces[:, :, 1 + axis], self._sound(faces)
            slow, fast = v - sound, v + sound
            # Davis wave-speed estimates bound the fastest left/right-going signals.
            s_left, s_right = torch.minimum(slow[0], slow[1]), torch.maximum(fast[0], fast[1])
            div = flux_divergence(hll(cons[0], cons[1], f[0], f[1], s_left, s_right), axis, self.dx[axis])
            total = div if total is None else total.add_(div)
        return total

    def max_dt(self, u: torch.Tensor) -> float:
        w = self.to_primitive(u)
        speed = w[:, 1 : 1 + self.ndim].abs().amax(dim=1).add_(self._sound(w))
        # amax().item(): a full max() reduction plus float() costs 3x as much (14 vs 4 us at 64x128).
        return self.cfg.cfl * min(self.dx) / speed.amax().item()

    def initial_conditions(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """W0 (n, C, *X) float64 of the configured family; every family keeps rho, p > 0:
        smooth: rho = rho_base (1 + rho_amp f), p likewise, v = v_amp f, f random Fourier sums;
        riemann: the box cut at `pieces` random positions per axis into blocks, each block one
            constant state rho_base (1 + rho_amp U), p_base (1 + p_amp U), v = v_amp U, U ~ U(-1, 1)
            (shock tubes, as PDEBench's 1D CFD "shock" data; periodic, so every cut is a jump);
        blast: gas at rest with p = p_base inside a random box of half-width in
            [blast_width / 2, blast_width] and p = blast_ratio p_base inside it, rho = rho_base."""
        cfg = self.cfg
        if cfg.ic == "riemann":
            block = self._random_blocks(n, gen)
            k = int(block.max()) + 1

            def field(base, amp):  # (n, *X): each block's constant value
                values = base + amp * (2 * torch.rand(n, k, generator=gen, dtype=torch.float64) - 1)
                return values.gather(1, block.flatten(1)).view(n, *self.shape)

            rho, p = field(cfg.rho_base, cfg.rho_base * cfg.rho_amp), field(cfg.p_base, cfg.p_base * cfg.p_amp)
            v = [field(0.0, cfg.v_amp) for _ in range(self.ndim)]
        elif cfg.ic == "blast":
            inside = torch.ones(n, *self.shape, dtype=torch.bool)
            for a in range(self.ndim):
                x = torch.from_numpy(self.cell_centres(a))
                centre = cfg.domain[0] + self.extent[a] * torch.rand(n, 1, generator=gen, dtype=torch.float64)
                half = cfg.blast_width * self.extent[a] * (0.5 + 0.5 * torch.rand(n, 1, generator=gen, dtype=torch.float64))
                d = (x - centre).abs()
                d = torch.minimum(d, self.extent[a] - d)  # periodic distance
                inside &= (d < half).view(n, *[1] * a, -1, *[1] * (self.ndim - a - 1))
            rho = torch.full((n, *self.shape), cfg.rho_base, dtype=torch.float64)
            p = cfg.p_base * torch.where(inside, cfg.blast_ratio, 1.0).to(torch.float64)
            v = [torch.zeros_like(rho) for _ in range(self.ndim)]
        else:
            rho = cfg.rho_base * (1 + cfg.rho_amp * random_smooth(gen, n, self.shape, cfg.k_max))
            p = cfg.p_base * (1 + cfg.p_amp * random_smooth(gen, n, self.shape, cfg.k_max))
            v = [cfg.v_amp * random_smooth(gen, n, self.shape, cfg.k_max) for _ in range(self.ndim)]
        return torch.stack([rho, *v, p], dim=1)

    def _random_blocks(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """(n, *X) int64 block index: per axis, `pieces` sorted uniform cuts split the periodic axis
        into arcs (the arc past the last cut wraps onto the first), blocks are products of arcs."""
        m = self.cfg.pieces
        block = torch.zeros(n, *self.shape, dtype=torch.int64)
        for a in range(self.ndim):
            x = (torch.arange(self.shape[a], dtype=torch.float64) + 0.5) / self.shape[a]
            cuts = torch.rand(n, m, generator=gen, dtype=torch.float64).sort(dim=1).values
            arc = (x.view(1, -1) >= cuts.unsqueeze(-1)).sum(1) % m  # (n, X_a) in [0, m)
            block = block * m + arc.view(n, *[1] * a, -1, *[1] * (self.ndim - a - 1))
        return block

    def solve(self, n, seed, progress=None):
        gen = torch.Generator().manual_seed(seed)
        w0 = self.initial_conditions(n, gen)
        times = torch.linspace(0.0, self.cfg.t_end, self.cfg.n_snapshots, dtype=torch.float64)
        with progress_bar(len(times) - 1, f"{self.name} solver", disable=progress is False, leave=False) as bar:
            u = integrate(self.to_conservative(w0), times, self.rhs, self.max_dt, progress=bar.update)
        w = self.to_primitive(u)
        if not bool((w[:, :, 0] > 0).all() and (w[:, :, -1] > 0).all()):
            raise RuntimeError(f"{self.name}: density or pressure went negative; lower cfl or the IC amplitudes")
        coords = coordinates(self)
        coords["t-coordinate"] = frame_times(self.cfg.t_end, self.cfg.n_snapshots)
        attrs = {"gamma": self.gamma, "dt": self.cfg.t_end / (self.cfg.n_snapshots - 1), "seed": seed,
                 "dx": self.dx[0], "solver": f"MUSCL-{self.cfg.limiter} + HLL + SSP-RK3, CFL {self.cfg.cfl}",
                 "boundary": self.boundary}
        return Trajectories(w.to(torch.float32).numpy(), coords, attrs)


@PROBLEMS.register("euler1d")
class Euler1d(Euler):
    Config = EulerConfig
    name = "euler1d"
    fields = ("density", "Vx", "pressure")
    ndim = 1


@dataclass
class Euler2dConfig(EulerConfig):
    type: str = "euler2d"
    n_cells: int = 32
    n_snapshots: int = 21
    t_end: float = 0.2


@PROBLEMS.register("euler2d")
class Euler2d(Euler):
    Config = Euler2dConfig
    name = "euler2d"
    fields = ("density", "Vx", "Vy", "pressure")
    ndim = 2
