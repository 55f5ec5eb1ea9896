"""Control metrics: outcome of a control sequence and how a recursive controller refines it.

Per-problem inputs are (B,) tensors as returned by `ControlProblem.evaluate` (final_error, effort,
cost, success); iterates are indexed k = 0 (first guess) .. K (after the last refinement cycle).
"""

from __future__ import annotations

import torch


def outcome_summary(ev: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per-problem final_error/effort/cost/success (B,) -> success rate, final error mean and
    median, mean effort and mean cost."""
    return {
        "success_rate": float(ev["success"].double().mean()),
        "final_error_mean": float(ev["final_error"].mean()),
        "final_error_median": float(ev["final_error"].median()),
        "effort_mean": float(ev["effort"].mean()),
        "cost_mean": float(ev["cost"].mean()),
    }


def cost_gap_pct(cost: torch.Tensor, teacher_cost: torch.Tensor) -> float:
    """(B,), (B,) -> 100 (mean c - mean c*) / mean c*: how much costlier than the teacher on the
    split as a whole (a ratio of means, so near-zero teacher costs cannot blow it up)."""
    return float(100 * (cost.mean() - teacher_cost.mean()) / teacher_cost.mean())


def refinement(costs: torch.Tensor, controls: torch.Tensor, teacher: torch.Tensor, rtol: float = 1e-6) -> dict:
    """costs (B, K+1), controls (K+1, B, T, m), teacher (B, T, m) ->
        cost_mean (K+1,)        mean cost of each iterate
        improvement (K,)        mean c_{k-1} - c_k (positive = the step helped)
        control_mse (K+1,)      MSE of each iterate's controls to the teacher's
        total_improvement (B,)  c_0 - c_K per problem
        monotonic (B,) bool     c_k <= c_{k-1} at every step (up to a relative rtol for round-off)
    """
    steps = costs[:, :-1] - costs[:, 1:]
    return {
        "cost_mean": costs.mean(0),
        "improvement": steps.mean(0),
        "control_mse": ((controls - teacher[None]) ** 2).mean(dim=(1, 2, 3)),
        "total_improvement": costs[:, 0] - costs[:, -1],
        "monotonic": (steps >= -rtol * costs[:, :-1].abs()).all(dim=1),
    }
