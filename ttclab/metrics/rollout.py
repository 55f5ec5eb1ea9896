"""Rollout errors. pred, true: (B, T, C, *X) in physical units, T including the initial state."""

from __future__ import annotations

import torch


def default_horizons(steps: int, wanted=(1, 4, 16)) -> list[int]:
    """The contract's horizons 1, 4, 16 (those that exist) and the final step."""
    return sorted({h for h in wanted if h <= steps} | {steps})


def mse_per_step(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """-> (B, T): mean squared error over fields and space at every step."""
    return ((pred - true) ** 2).flatten(2).mean(dim=2)


def nrmse_per_step(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """-> (B, T): PDEBench's normalized RMSE, ||pred - true|| / ||true|| per field, averaged over fields."""
    err = ((pred - true) ** 2).flatten(3).sum(dim=3)
    ref = (true**2).flatten(3).sum(dim=3).clamp_min(1e-12)
    return torch.sqrt(err / ref).mean(dim=2)


def conservation_drift(problem, traj: torch.Tensor) -> dict[str, torch.Tensor]:
    """traj (B, T, C, *X) -> {quantity: (B, T)} relative drift |Q(t) - Q(0)| / integral |q(0)|.
    Dividing by the integral of |q| keeps the drift finite when a total (e.g. momentum) is ~0."""
    totals = problem.conserved(traj)
    scale = problem.conserved_scale(traj[:, :1])
    return {k: (q - q[:, :1]).abs() / scale[k] for k, q in totals.items()}
