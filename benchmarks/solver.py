"""Cell-updates/s of the problems' float64 Euler solver next to a plain numpy reference of the same
scheme (primitive MUSCL-minmod faces, HLL flux with Davis speeds, SSP-RK3, one CFL dt per batch
step landing on each output time), on the same ICs, one thread, measured side by side.

    python benchmarks/solver.py [--n 64] [--cells 128] [--repeats 3]

Prints both rates, their ratio, and the largest difference of the two solutions (round-off).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def numpy_solve(u0: np.ndarray, times: np.ndarray, gamma: float, dx: float, cfl: float) -> tuple[np.ndarray, int]:
    """The reference: u (B, 3, X) conservative (rho, m, E), periodic in x -> (final u, RK3 steps)."""

    def prim(u):
        rho, m, e = u[:, 0], u[:, 1], u[:, 2]
        v = m / rho
        return rho, v, (gamma - 1) * (e - 0.5 * m * v)

    def faces(q):  # minmod-limited left/right states at face i+1/2
        left, right = q - np.roll(q, 1, -1), np.roll(q, -1, -1) - q
        s = np.where(left * right > 0, np.where(np.abs(left) < np.abs(right), left, right), 0.0)
        return q + 0.5 * s, np.roll(q - 0.5 * s, -1, -1)

    def state(rho, v, p):  # conservative U, flux F, sound speed c
        m, e = rho * v, p / (gamma - 1) + 0.5 * rho * v * v
        c = np.sqrt(gamma * np.maximum(p, 1e-12) / np.maximum(rho, 1e-12))
        return np.stack([rho, m, e], 1), np.stack([m, m * v + p, (e + p) * v], 1), c

    def rhs(u):
        (rl, rr), (vl, vr), (pl, pr) = (faces(q) for q in prim(u))
        ul, fl, cl = state(rl, vl, pl)
        ur, fr, cr = state(rr, vr, pr)
        sl = np.minimum(np.minimum(vl - cl, vr - cr), 0.0)[:, None]
        sr = np.maximum(np.maximum(vl + cl, vr + cr), 0.0)[:, None]
        f = (sr * fl - sl * fr + sl * sr * (ur - ul)) / np.maximum(sr - sl, 1e-12)
        return -(f - np.roll(f, 1, -1)) / dx

    u, t, steps = u0.copy(), float(times[0]), 0
    for t_next in times[1:]:
        while t < t_next - 1e-12:
            rho, v, p = prim(u)
            dt = min(cfl * dx / float((np.abs(v) + np.sqrt(gamma * np.maximum(p, 1e-12) / rho)).max()), t_next - t)
            u1 = u + dt * rhs(u)
            u2 = 0.75 * u + 0.25 * (u1 + dt * rhs(u1))
            u = u / 3.0 + 2.0 / 3.0 * (u2 + dt * rhs(u2))
            t, steps = t + dt, steps + 1
    return u, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="trajectories in the batch")
    parser.add_argument("--cells", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved torch/numpy pairs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from ttclab.problems import make_problem
    from ttclab.problems.fv import integrate
    from ttclab.project import load_project

    cfg = load_project(REPO / "projects" / "euler1d.yaml", [f"problem.n_cells={args.cells}", "problem.limiter=minmod"])
    problem = make_problem(cfg.problem)
    u0 = problem.to_conservative(problem.initial_conditions(args.n, torch.Generator().manual_seed(0)))
    times = torch.linspace(0.0, cfg.problem.t_end, cfg.problem.n_snapshots, dtype=torch.float64)
    rates: dict[str, list[float]] = {"ttclab (torch float64)": [], "numpy reference (float64)": []}
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours = integrate(u0, times, problem.rhs, problem.max_dt)[:, -1].numpy()
        ours_s = time.perf_counter() - start
        start = time.perf_counter()
        ref, steps = numpy_solve(u0.numpy(), times.numpy(), problem.gamma, problem.dx[0], cfg.problem.cfl)
        ref_s = time.perf_counter() - start
        updates = args.n * args.cells * steps
        rates["ttclab (torch float64)"].append(updates / ours_s)
        rates["numpy reference (float64)"].append(updates / ref_s)
    print(f"{args.n} trajectories x {args.cells} cells, {steps} SSP-RK3 steps, 1 thread, "
          f"load average {os.getloadavg()[0]:.2f}; max |difference| {np.abs(ours - ref).max():.1e}")
    med = {k: statistics.median(v) for k, v in rates.items()}
    for k, v in rates.items():
        print(f"{k:28s} median {med[k]:.2e} cell-updates/s (max {max(v):.2e})")
    ours_rate, ref_rate = med.values()
    print(f"ttclab / numpy: {ours_rate / ref_rate:.2f}x")


if __name__ == "__main__":
    main()
