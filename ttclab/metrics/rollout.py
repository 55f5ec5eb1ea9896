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


def crmse_per_step(problem, pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """-> (B, T): PDEBench's cRMSE on the problem's conserved totals Q (mass, momentum, energy):
    sqrt(mean_Q ((Q_pred(t) - Q_true(t)) / int|q_true(0)|)^2). Scaling by int|q(0)| (as the drift
    does) makes totals of different units comparable and keeps a ~0 total (momentum) finite."""
    tp, tt = problem.conserved(pred), problem.conserved(true)
    scale = problem.conserved_scale(true[:, :1])
    sq = torch.stack([((tp[k] - tt[k]) / scale[k]) ** 2 for k in tt])
    return sq.mean(dim=0).sqrt()


FRMSE_BANDS = {"low": (0.0, 4.0), "mid": (4.0, 12.0), "high": (12.0, float("inf"))}


def frmse_per_step(pred: torch.Tensor, true: torch.Tensor, ndim: int, bands=FRMSE_BANDS) -> dict[str, torch.Tensor]:
    """-> {band: (B, T)} PDEBench's fRMSE: the RMSE carried by the error's Fourier modes with integer
    wavenumber |k| in [lo, hi) (PDEBench's 1D bands k < 4, 4 <= k < 12, k >= 12; in 2D |k| is the
    radial sqrt(kx^2 + ky^2)). With E = fftn(pred - true) / n, Parseval gives mean_x e^2 = sum_k |E_k|^2,
    so fRMSE_band = sqrt(mean_fields sum_{|k| in band} |E_k|^2) and the bands' squares add up to the MSE."""
    dims = tuple(range(-ndim, 0))
    energy = torch.fft.fftn(pred - true, dim=dims, norm="forward").abs() ** 2
    shape = pred.shape[-ndim:]
    grids = torch.meshgrid(*[torch.fft.fftfreq(n, 1.0 / n, device=pred.device) for n in shape], indexing="ij")
    k = torch.sqrt(sum(g**2 for g in grids))
    out = {}
    for name, (lo, hi) in bands.items():
        mask = ((k >= lo) & (k < hi)).to(energy.dtype)
        out[name] = (energy * mask).flatten(3).sum(dim=3).mean(dim=2).sqrt()
    return out


def maxerr_per_step(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """-> (B, T): max |pred - true| over fields and space (PDEBench's max error)."""
    return (pred - true).abs().flatten(2).amax(dim=2)


def rmse_per_field(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """-> (B, T, C): sqrt(mean_x (pred - true)^2) of each field."""
    return ((pred - true) ** 2).flatten(3).mean(dim=3).sqrt()


def correlation_per_step(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """-> (B, T): Pearson correlation over space of each field, averaged over fields. A field that is
    constant in space (std 0) correlates 0, so a flat prediction never counts as correlated."""
    p, t = pred.flatten(3), true.flatten(3)
    p, t = p - p.mean(dim=3, keepdim=True), t - t.mean(dim=3, keepdim=True)
    den = (p.norm(dim=3) * t.norm(dim=3)).clamp_min(1e-30)
    return ((p * t).sum(dim=3) / den).mean(dim=2)


def correlation_time(pred: torch.Tensor, true: torch.Tensor, threshold: float = 0.8) -> torch.Tensor:
    """-> (B,) PDE-Refiner's high-correlation time: the first step t >= 1 at which the correlation
    with the truth drops below `threshold`; T (= steps + 1, past the horizon) if it never does."""
    below = correlation_per_step(pred, true)[:, 1:] < threshold
    never = torch.full_like(below[:, 0], below.shape[1] + 1, dtype=torch.long)
    return torch.where(below.any(dim=1), below.long().argmax(dim=1) + 1, never)
