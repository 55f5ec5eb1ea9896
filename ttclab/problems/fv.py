"""Finite-volume building blocks on periodic grids, vectorized over a batch of trajectories.

Arrays are (B, C, *X); `axis` counts spatial axes (0 = x), so the tensor dim is 2 + axis. Face
arrays hold the value at face i+1/2 at index i.
"""

from __future__ import annotations

from typing import Callable

import torch


def minmod(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The smaller-magnitude argument where a and b share a sign, else 0, as
    max(min(a, b), 0) + min(max(a, b), 0): four element-wise ops instead of torch.where, which on a
    data-dependent CPU mask costs ~10x an element-wise op (120 vs 7-12 us at 64x3x128)."""
    return torch.minimum(a, b).clamp_min_(0.0).add_(torch.maximum(a, b).clamp_max_(0.0))


def limited_slope(left: torch.Tensor, right: torch.Tensor, limiter: str) -> torch.Tensor:
    """Cell slope sigma_i from the left/right differences, limited to avoid new extrema (TVD)."""
    if limiter == "minmod":
        return minmod(left, right)
    if limiter == "mc":  # monotonized central: minmod(2 l, (l + r) / 2, 2 r)
        return minmod(minmod(2 * left, 2 * right), 0.5 * (left + right))
    raise ValueError(f"unknown limiter {limiter!r}; valid: minmod, mc")


def muscl_faces(q: torch.Tensor, axis: int, limiter: str) -> torch.Tensor:
    """(2, *q.shape): left/right states at every face i+1/2, q_L = q_i + s_i/2, q_R = q_{i+1} - s_{i+1}/2
    (`q_left, q_right = muscl_faces(...)` unpacks them). One stacked tensor lets a caller evaluate
    fluxes and wave speeds of both sides in one op each: at these sizes an op's fixed cost dominates."""
    dim = 2 + axis
    q_next = q.roll(-1, dims=dim)
    right = q_next - q
    half = limited_slope(right.roll(1, dims=dim), right, limiter).mul_(0.5)
    faces = q.new_empty((2, *q.shape))
    torch.add(q, half, out=faces[0])
    torch.sub(q_next, half.roll(-1, dims=dim), out=faces[1])
    return faces


def hll(
    u_left: torch.Tensor,
    u_right: torch.Tensor,
    f_left: torch.Tensor,
    f_right: torch.Tensor,
    s_left: torch.Tensor,
    s_right: torch.Tensor,
) -> torch.Tensor:
    """HLL flux with signal speeds clipped so the formula also covers the upwind cases:
    F = (S_R F_L - S_L F_R + S_L S_R (U_R - U_L)) / (S_R - S_L), S_L <= 0 <= S_R."""
    sl = s_left.clamp(max=0.0).unsqueeze(1)
    sr = s_right.clamp(min=0.0).unsqueeze(1)
    jump = (u_right - u_left).mul_(sl * sr)
    return (sr * f_left).sub_(sl * f_right).add_(jump).div_((sr - sl).clamp_min_(1e-12))


def flux_divergence(face_flux: torch.Tensor, axis: int, dx: float) -> torch.Tensor:
    """-(F_{i+1/2} - F_{i-1/2}) / dx; telescopes on a periodic grid, so totals are conserved exactly."""
    return (face_flux.roll(1, dims=2 + axis) - face_flux).div_(dx)


def ssp_rk3(u: torch.Tensor, dt: torch.Tensor | float, rhs: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Shu-Osher third-order strong-stability-preserving Runge-Kutta step,
    u1 = u + dt L(u), u2 = 3/4 u + 1/4 (u1 + dt L(u1)), u' = u/3 + 2/3 (u2 + dt L(u2)),
    accumulated in place in each fresh rhs tensor (same operation order, no extra temporaries)."""
    u1 = rhs(u).mul_(dt).add_(u)
    u2 = rhs(u1).mul_(dt).add_(u1).mul_(0.25).add_(0.75 * u)
    return rhs(u2).mul_(dt).add_(u2).mul_(2.0 / 3.0).add_(u / 3.0)


def integrate(
    u0: torch.Tensor,
    times: torch.Tensor,
    rhs: Callable[[torch.Tensor], torch.Tensor],
    max_dt: Callable[[torch.Tensor], float],
    progress=None,
) -> torch.Tensor:
    """March u0 (B, C, *X) through the output `times` (T,), CFL-limited steps landing exactly on each
    output time; returns (B, T, C, *X). One global dt for the batch keeps the loop vectorized."""
    out = [u0]
    u, t = u0, float(times[0])
    for t_next in times[1:].tolist():
        while t < t_next - 1e-12:
            dt = min(max_dt(u), t_next - t)
            u = ssp_rk3(u, dt, rhs)
            t += dt
        out.append(u)
        if progress is not None:
            progress(1)
    return torch.stack(out, dim=1)
