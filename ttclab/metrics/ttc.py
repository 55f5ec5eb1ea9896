"""TTC summaries: SampleGain against the baseline on the same ICs, and reward ranking quality."""

from __future__ import annotations

import torch


def sample_gain(mse_baseline: torch.Tensor, mse_ttc: torch.Tensor) -> torch.Tensor:
    """Per IC, in %: 100 * (MSE_baseline - MSE_ttc) / MSE_baseline; (B,), (B,) -> (B,)."""
    return 100.0 * (mse_baseline - mse_ttc) / mse_baseline.clamp_min(1e-30)


def summarize_gain(gain: torch.Tensor) -> dict[str, float]:
    return {
        "sample_gain/mean": float(gain.mean()),
        "sample_gain/median": float(gain.median()),
        "sample_gain/improved_frac": float((gain > 0).float().mean()),
    }


def best_pick_rate(scores: torch.Tensor, errors: torch.Tensor) -> float:
    """Fraction of rows (B, N) where the highest score is the lowest-error candidate (chance: 1/N)."""
    return float((scores.argmax(dim=1) == errors.argmin(dim=1)).float().mean())


def headroom_captured(mse_baseline: float, mse_sel: float, mse_oracle: float) -> float:
    """(MSE_baseline - MSE_sel) / (MSE_baseline - MSE_oracle): 1 = as good as the oracle pick."""
    gap = mse_baseline - mse_oracle
    return float("nan") if gap <= 0 else (mse_baseline - mse_sel) / gap

