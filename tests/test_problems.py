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
