"""Physics of the generated data, checked from the saved HDF5 file alone (no solver state)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from ttclab.problems import make_problem

# Float32 storage rounds each value to ~6e-8 relative and the tiny sets drift ~2e-8: 1e-6 leaves a
# 50x margin for round-off and nothing for a flux that does not telescope.
ROUND_OFF = 1e-6


def relative_drift(density: np.ndarray, dv: float) -> float:
    """density q (N, T, *X) -> max over trajectories and time of |Q(t) - Q(0)| / integral |q(0)|."""
    space = tuple(range(2, density.ndim))
    total = density.sum(axis=space) * dv
    scale = np.abs(density[:, :1]).sum(axis=space) * dv
    return float((np.abs(total - total[:, :1]) / scale).max())


def euler_densities(f: h5py.File, velocity_keys: list[str]) -> dict[str, np.ndarray]:
    """Conserved densities of an ideal gas from PDEBench's primitive fields, in float64."""
    gamma = float(f.attrs["gamma"])
    rho, p = f["density"][()].astype(np.float64), f["pressure"][()].astype(np.float64)
    v = [f[k][()].astype(np.float64) for k in velocity_keys]
    out = {"mass": rho, "energy": p / (gamma - 1) + 0.5 * rho * sum(c * c for c in v)}
    for key, c in zip(velocity_keys, v):
        out[f"momentum {key}"] = rho * c
    return out


def cell_volume(f: h5py.File, axes: list[str]) -> float:
    return float(np.prod([np.diff(f[a][()].astype(np.float64)).mean() for a in axes]))


@pytest.mark.parametrize("problem, velocities, axes", [
    ("euler1d", ["Vx"], ["x-coordinate"]),
    ("euler2d", ["Vx", "Vy"], ["x-coordinate", "y-coordinate"]),
])
def test_euler_file_conserves_mass_momentum_energy(tiny_data_file, problem, velocities, axes):
    with h5py.File(tiny_data_file(problem), "r") as f:
        dv = cell_volume(f, axes)
        densities = euler_densities(f, velocities)
        assert f["density"].dtype == np.float32
        assert (f["density"][()] > 0).all() and (f["pressure"][()] > 0).all()
        # The solution must actually evolve, or conservation would hold trivially.
        assert np.abs(f["density"][:, -1] - f["density"][:, 0]).max() > 1e-2
    for name, q in densities.items():
        assert relative_drift(q, dv) < ROUND_OFF, name


def test_burgers_file_conserves_mass(tiny_data_file):
    with h5py.File(tiny_data_file("burgers1d"), "r") as f:
        u = f["tensor"][()].astype(np.float64)
        dv = cell_volume(f, ["x-coordinate"])
    assert np.abs(u[:, -1] - u[:, 0]).max() > 1e-2
    assert relative_drift(u, dv) < ROUND_OFF


def test_problem_conserved_matches_hand_integrals(tiny_project, tiny_data_file):
    """The problem's own `conserved` (used by metrics and ARM) agrees with the integrals above."""
    problem = make_problem(tiny_project("euler1d").problem)
    with h5py.File(tiny_data_file("euler1d"), "r") as f:
        by_hand = euler_densities(f, ["Vx"])
        u = np.stack([f[k][()] for k in problem.fields], axis=2)
    totals = problem.conserved(torch.from_numpy(u).double())
    assert set(totals) == {"mass", "momentum", "energy"}
    for name, key in [("mass", "mass"), ("momentum", "momentum Vx"), ("energy", "energy")]:
        expected = by_hand[key].sum(axis=-1) * problem.dx[0]
        np.testing.assert_allclose(totals[name].numpy(), expected, rtol=1e-12, atol=1e-12)


def test_solver_is_seeded(tiny_project):
    problem = make_problem(tiny_project("burgers1d").problem)
    a, b, c = problem.solve(3, seed=1, progress=False), problem.solve(3, seed=1, progress=False), \
        problem.solve(3, seed=2, progress=False)
    np.testing.assert_array_equal(a.fields, b.fields)
    assert not np.array_equal(a.fields, c.fields)


def test_project_conserved_restores_totals(tiny_project, tiny_data_file):
    problem = make_problem(tiny_project("euler1d").problem)
    with h5py.File(tiny_data_file("euler1d"), "r") as f:
        w = torch.from_numpy(np.stack([f[k][:, -1] for k in problem.fields], axis=1)).double()
    target = problem.conserved(w)
    shifted = w * torch.tensor([1.02, 1.0, 0.97], dtype=torch.float64).view(1, 3, 1) + 0.01
    projected = problem.project_conserved(shifted, target)
    for name, total in problem.conserved(projected).items():
        torch.testing.assert_close(total, target[name], rtol=1e-10, atol=1e-10)


def previous_faces(q, dim, lim):
    """MUSCL face states as problems/fv.py computed them before the fused version (torch.where limiter)."""
    left, right = q - q.roll(1, dim), q.roll(-1, dim) - q
    if lim == "minmod":
        s = torch.where(left.abs() < right.abs(), left, right)
    else:
        central = 0.5 * (left + right)
        s = torch.sign(central) * torch.minimum(torch.minimum(2 * left.abs(), 2 * right.abs()), central.abs())
    s = torch.where(left * right > 0, s, 0.0)
    return q + 0.5 * s, (q - 0.5 * s).roll(-1, dim)


def previous_hll(ul, ur, fl, fr, sl, sr):
    sl, sr = sl.clamp(max=0.0).unsqueeze(1), sr.clamp(min=0.0).unsqueeze(1)
    return (sr * fl - sl * fr + sl * sr * (ur - ul)) / (sr - sl).clamp_min(1e-12)


def previous_rk3(u, dt, rhs):
    u1 = u + dt * rhs(u)
    u2 = 0.75 * u + 0.25 * (u1 + dt * rhs(u1))
    return u / 3.0 + 2.0 / 3.0 * (u2 + dt * rhs(u2))


def previous_euler(problem):
    """(max_dt(u), step(u, dt)) of the Euler solver as formulated before the fused in-place version
    in problems/fv.py (separate left/right faces, torch.where limiter, out-of-place SSP-RK3): the
    reference the optimized step must reproduce to round-off; benchmarks/solver.py times it as "before"."""
    g, d, lim = problem.gamma, problem.ndim, problem.cfg.limiter

    def prim(u):
        rho, m, e = u[:, :1], u[:, 1:1 + d], u[:, 1 + d:]
        v = m / rho
        return torch.cat([rho, v, (g - 1) * (e - 0.5 * (m * v).sum(1, keepdim=True))], 1)

    def sound(w):
        return torch.sqrt(g * w[:, -1].clamp_min(1e-12) / w[:, 0].clamp_min(1e-12))

    def flux(w, a):
        rho, v, p = w[:, :1], w[:, 1:1 + d], w[:, 1 + d:]
        u = torch.cat([rho, rho * v, p / (g - 1) + 0.5 * rho * (v * v).sum(1, keepdim=True)], 1)
        f = u * v[:, a:a + 1]
        f[:, 1 + a:2 + a] += p
        f[:, -1:] += p * v[:, a:a + 1]
        return f, u

    def rhs(u):
        w, total = prim(u), torch.zeros_like(u)
        for a in range(d):
            wl, wr = previous_faces(w, 2 + a, lim)
            (fl, ul), (fr, ur) = flux(wl, a), flux(wr, a)
            vl, vr, cl, cr = wl[:, 1 + a], wr[:, 1 + a], sound(wl), sound(wr)
            f = previous_hll(ul, ur, fl, fr, torch.minimum(vl - cl, vr - cr), torch.maximum(vl + cl, vr + cr))
            total += -(f - f.roll(1, 2 + a)) / problem.dx[a]
        return total

    def max_dt(u):
        w = prim(u)
        return problem.cfg.cfl * min(problem.dx) / float((w[:, 1:1 + d].abs().amax(1) + sound(w)).max())

    return max_dt, lambda u, dt: previous_rk3(u, dt, rhs)


@pytest.mark.parametrize("name, limiter, ic", [
    ("euler1d", "minmod", "riemann"), ("euler1d", "mc", "smooth"),
    ("euler2d", "minmod", "blast"), ("euler2d", "mc", "riemann"),
])
def test_euler_step_matches_previous_formulation(tiny_project, name, limiter, ic):
    """The fused in-place step equals the previous one on random states (jumps included, so the
    limiter's every branch is taken) to round-off, and it still conserves the totals."""
    from ttclab.problems.fv import ssp_rk3

    problem = make_problem(tiny_project(name, f"problem.limiter={limiter}", f"problem.ic={ic}").problem)
    u = problem.to_conservative(problem.initial_conditions(3, torch.Generator().manual_seed(4)))
    u = u * (1 + 0.05 * torch.rand(u.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    max_dt, step = previous_euler(problem)
    assert problem.max_dt(u) == max_dt(u)
    expected = step(u, max_dt(u))
    got = ssp_rk3(u, problem.max_dt(u), problem.rhs)
    assert (got - u).abs().max() > 1e-3  # the step moves the state
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    space = tuple(range(2, u.ndim))
    torch.testing.assert_close(got.sum(space), u.sum(space), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("limiter", ["minmod", "mc"])
def test_burgers_step_matches_previous_formulation(tiny_project, limiter):
    """Burgers shares problems/fv.py's faces, HLL, divergence and SSP-RK3 with Euler: its fused step
    equals the previous formulation to round-off too, with viscosity on, and conserves the mass."""
    from ttclab.problems.fv import ssp_rk3

    problem = make_problem(tiny_project("burgers1d", f"problem.limiter={limiter}", "problem.nu=0.05").problem)
    gen = torch.Generator().manual_seed(6)
    u = torch.randn(3, 1, problem.cfg.n_cells, generator=gen, dtype=torch.float64)  # rough: every limiter branch
    dx, nu = problem.dx[0], problem.cfg.nu

    def rhs(u):
        ul, ur = previous_faces(u, 2, limiter)
        speed = torch.maximum(ul.abs(), ur.abs())[:, 0]
        f = previous_hll(ul, ur, 0.5 * ul**2, 0.5 * ur**2, -speed, speed) - nu * (u.roll(-1, 2) - u) / dx
        return -(f - f.roll(1, 2)) / dx

    dt = problem.max_dt(u)
    expected, got = previous_rk3(u, dt, rhs), ssp_rk3(u, dt, problem.rhs)
    assert (got - u).abs().max() > 1e-2  # the step moves the state
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.sum(2), u.sum(2), rtol=1e-12, atol=1e-12)
