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



def bootstrap_ci(values: torch.Tensor, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-IC values (B,): resample the ICs with
    replacement `resamples` times (seeded, so a rerun gives the same interval) and take the
    (1 - level)/2 and (1 + level)/2 quantiles of the resampled means. Paired: pass the per-IC gain
    of one rollout over another on the same ICs, so IC difficulty cancels."""
    gen = torch.Generator().manual_seed(seed)
    v = values.detach().double().cpu()
    idx = torch.randint(0, v.numel(), (resamples, v.numel()), generator=gen)
    means = v[idx].mean(dim=1)
    lo, hi = torch.quantile(means, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return float(lo), float(hi)


def gain_with_ci(mse_ref: torch.Tensor, mse: torch.Tensor, prefix: str, seed: int = 0) -> dict[str, float]:
    """`<prefix>/mean|ci_lo|ci_hi|within_noise`: paired per-IC SampleGain (%) of `mse` over `mse_ref`
    (both (B,)), its bootstrap 95% interval, and 1.0 when that interval includes 0 (within noise)."""
    gain = sample_gain(mse_ref, mse)
    lo, hi = bootstrap_ci(gain, seed=seed)
    return {f"{prefix}/mean": float(gain.mean()), f"{prefix}/ci_lo": lo, f"{prefix}/ci_hi": hi,
            f"{prefix}/within_noise": float(lo <= 0.0 <= hi)}
