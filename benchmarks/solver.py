"""Cell-updates/s of the problems' float64 Euler solver next to a plain numpy reference of the same
scheme (primitive MUSCL-minmod faces, HLL flux with Davis speeds, SSP-RK3, one CFL dt per batch
step landing on each output time), on the same ICs, one thread, measured side by side.

    python benchmarks/solver.py [--n 64] [--cells 128] [--repeats 3] [--ndim 2]

Also times the previous torch formulation (the "before" of issue 15; tests/test_problems.py keeps
it), all interleaved in each round. Prints the rates, ttclab's ratio to each, and the largest
difference of the solutions (round-off). --ndim 2 runs euler2d without the (1D) numpy column.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
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


def previous_solve(problem, u0: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """The torch formulation before the in-place rewrite (tests/test_problems.py keeps it as the
    reference the step must match), marched like fv.integrate -> final u."""
    sys.path.insert(0, str(REPO / "tests"))
    from test_problems import previous_euler

    max_dt, step = previous_euler(problem)
    u, t = u0, float(times[0])
    for t_next in times[1:].tolist():
        while t < t_next - 1e-12:
            dt = min(max_dt(u), t_next - t)
            u, t = step(u, dt), t + dt
    return u


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="trajectories in the batch")
    parser.add_argument("--cells", type=int, default=128, help="cells per axis")
    parser.add_argument("--ndim", type=int, default=1, choices=(1, 2), help="2: euler2d, no numpy column")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of all implementations")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from ttclab.problems import make_problem
    from ttclab.problems.fv import integrate
    from ttclab.project import load_project

    project = REPO / "projects" / f"euler{args.ndim}d.yaml"
    cfg = load_project(project, [f"problem.n_cells={args.cells}", "problem.limiter=minmod"])
    problem = make_problem(cfg.problem)
    u0 = problem.to_conservative(problem.initial_conditions(args.n, torch.Generator().manual_seed(0)))
    times = torch.linspace(0.0, cfg.problem.t_end, cfg.problem.n_snapshots, dtype=torch.float64)
    solvers = {
        "ttclab (torch float64)": lambda: integrate(u0, times, problem.rhs, problem.max_dt)[:, -1].numpy(),
        "previous ttclab formulation": lambda: previous_solve(problem, u0, times).numpy(),
    }
    steps = []
    if args.ndim == 1:
        def numpy_column():
            ref, n_steps = numpy_solve(u0.numpy(), times.numpy(), problem.gamma, problem.dx[0], cfg.problem.cfl)
            steps.append(n_steps)
            return ref
        solvers["numpy reference (float64)"] = numpy_column
    seconds: dict[str, list[float]] = {k: [] for k in solvers}
    finals = {}
    for _ in range(args.repeats):
        for name, solve in solvers.items():
            start = time.perf_counter()
            finals[name] = solve()
            seconds[name].append(time.perf_counter() - start)
    if not steps:  # count the steps once, outside the timed rounds
        steps.append(sum(1 for _ in _steps(problem, u0, times)))
    updates = args.n * args.cells**args.ndim * steps[0]
    ours = finals["ttclab (torch float64)"]
    diff = max(float(np.abs(ours - v).max()) for v in finals.values())
    print(f"euler{args.ndim}d: {args.n} trajectories x {args.cells}^{args.ndim} cells, {steps[0]} SSP-RK3 steps, "
          f"1 thread, load average {os.getloadavg()[0]:.2f}; max |difference| to ttclab {diff:.1e}")
    med = {k: updates / statistics.median(v) for k, v in seconds.items()}
    for k, v in seconds.items():
        print(f"{k:28s} median {med[k]:.2e} cell-updates/s (max {updates / min(v):.2e})")
    for k in list(med)[1:]:
        print(f"ttclab / {k}: {med['ttclab (torch float64)'] / med[k]:.2f}x")


def _steps(problem, u0: torch.Tensor, times: torch.Tensor):
    """Yield once per SSP-RK3 step of fv.integrate's schedule (the step count for 2D, no numpy column)."""
    from ttclab.problems.fv import ssp_rk3

    u, t = u0, float(times[0])
    for t_next in times[1:].tolist():
        while t < t_next - 1e-12:
            dt = min(problem.max_dt(u), t_next - t)
            u, t = ssp_rk3(u, dt, problem.rhs), t + dt
            yield


if __name__ == "__main__":
    main()
