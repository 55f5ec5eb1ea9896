"""How well a scorer ranks candidates: triplet accuracy, Spearman correlation, rank calibration.

Generic over the scorer (PRM, ARM, anything obeying the reward contract): every function takes
    scores (B, N)  higher = the scorer prefers the candidate
    errors (B, N)  realized error of each candidate (e.g. MSE to the true next state), lower = better
for B states with N candidates each. Only the order of candidates *within* a state matters for
selection, so all metrics compare ranks within a state and then average over states; a scorer's
offset or scale per state never changes them.

Sign convention: correlations are taken between the score and the *negated* error, so a scorer that
prefers low-error candidates gets a positive `spearman` (+1 perfect, 0 uninformative, -1 inverted).
"""

from __future__ import annotations

import torch


def triplet_accuracy(scores: torch.Tensor) -> float:
    """scores (M, 3) for (best, median, worst) candidates -> fraction of triplets ordered strictly,
    s_best > s_median > s_worst (chance level for a random scorer: 1/6)."""
    if scores.ndim != 2 or scores.shape[1] != 3:
        raise ValueError(f"triplet scores must be (M, 3) ordered (best, median, worst), got {tuple(scores.shape)}")
    ok = (scores[:, 0] > scores[:, 1]) & (scores[:, 1] > scores[:, 2])
    return float(ok.float().mean())


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """x (B, N) -> ranks (B, N) in 0..N-1 along dim 1, ties sharing their average rank:
    rank_i = #{j: x_j < x_i} + (#{j: x_j = x_i} - 1) / 2. O(N^2) per row via one broadcast compare,
    which is cheap for the candidate counts used here (N <= a few hundred)."""
    less = (x.unsqueeze(2) > x.unsqueeze(1)).sum(2)
    equal = (x.unsqueeze(2) == x.unsqueeze(1)).sum(2)
    return less.to(torch.float64) + (equal.to(torch.float64) - 1) / 2


def _check(scores: torch.Tensor, errors: torch.Tensor) -> None:
    if scores.shape != errors.shape or scores.ndim != 2:
        raise ValueError(f"scores and errors must both be (B, N), got {tuple(scores.shape)} and {tuple(errors.shape)}")


def spearman(scores: torch.Tensor, errors: torch.Tensor) -> torch.Tensor:
    """-> (B,) Spearman correlation per state between scores and -errors: the Pearson correlation of
    the average ranks. A state where the scores (or errors) are all equal carries no ranking
    information and gets 0."""
    _check(scores, errors)
    rs, re = average_ranks(scores.detach()), average_ranks(-errors.detach())
    rs, re = rs - rs.mean(1, keepdim=True), re - re.mean(1, keepdim=True)
    den = (rs.square().sum(1) * re.square().sum(1)).sqrt()
    rho = (rs * re).sum(1) / den.clamp_min(1e-30)
    return torch.where(den > 0, rho, torch.zeros_like(rho)).float()


def rank_quantiles(x: torch.Tensor) -> torch.Tensor:
    """x (B, N) -> within-row rank mapped to [0, 1] (0 = smallest, 1 = largest; N = 1 gives 0.5)."""
    n = x.shape[1]
    return average_ranks(x) / (n - 1) if n > 1 else torch.full_like(x, 0.5, dtype=torch.float64)


def calibration(scores: torch.Tensor, errors: torch.Tensor, bins: int = 10) -> dict:
    """Reliability of a scorer as a ranker, in two views sharing the same buckets.

    Each candidate gets its score quantile q in [0, 1] within its state (1 = top score) and its
    goodness quantile g (1 = lowest error in its state). Candidates are pooled and bucketed by q into
    `bins` equal-width bins; as q is uniform within each state these are quantile bins of the score.
    Per bucket:
        q_mean    mean score quantile (the x axis of the reliability plot)
        goodness  mean g: the realized rank of the error; a perfectly calibrated ranker has g = q
        rel_mse   mean realized error relative to its state's mean error over the N candidates,
                  e / mean_j(e_j), so easy and hard states are comparable (1 = an average pick)
        count     candidates in the bucket
    ece = sum_b (count_b / total) * |goodness_b - q_mean_b|: the expected rank-calibration error.
    0 = every score quantile predicts the realized error quantile exactly; a random scorer gives
    about 0.25, an inverted one about 0.5. (PRM scores are margins, not probabilities, so the
    classic ECE over predicted probabilities has no meaning here; ranks are what selection uses.)
    """
    _check(scores, errors)
    q = rank_quantiles(scores.detach()).flatten()
    g = rank_quantiles(-errors.detach()).flatten()
    e = errors.detach().to(torch.float64)
    rel = (e / e.mean(1, keepdim=True).clamp_min(1e-30)).flatten()
    idx = (q * bins).long().clamp(max=bins - 1)
    count = torch.zeros(bins, dtype=torch.float64).index_add_(0, idx, torch.ones_like(q))
    safe = count.clamp_min(1)

    def bucket_mean(v):
        return torch.zeros(bins, dtype=torch.float64).index_add_(0, idx, v) / safe

    q_mean, goodness, rel_mse = bucket_mean(q), bucket_mean(g), bucket_mean(rel)
    ece = float(((count / count.sum()) * (goodness - q_mean).abs()).sum())
    keep = count > 0
    return {"q_mean": q_mean[keep], "goodness": goodness[keep], "rel_mse": rel_mse[keep],
            "count": count[keep], "ece": ece}


def ranking_report(scores: torch.Tensor, errors: torch.Tensor, bins: int = 10, prefix: str = "prm") -> dict:
    """The summary numbers for a run: {prefix}/spearman (mean over states), {prefix}/ece, and
    {prefix}/top1 (fraction of states whose top-scored candidate has the lowest error) and
    {prefix}/regret (mean relative excess error of the top-scored pick over the best candidate)."""
    _check(scores, errors)
    pick = scores.argmax(1, keepdim=True)
    chosen = errors.gather(1, pick).squeeze(1)
    best = errors.min(1).values
    return {
        f"{prefix}/spearman": float(spearman(scores, errors).mean()),
        f"{prefix}/ece": calibration(scores, errors, bins)["ece"],
        f"{prefix}/top1": float((chosen <= best).float().mean()),
        f"{prefix}/regret": float(((chosen - best) / errors.mean(1).clamp_min(1e-30)).mean()),
    }


def ranking_by_step(scores: torch.Tensor, errors: dict[str, torch.Tensor], steps: torch.Tensor) -> dict[str, dict[int, float]]:
    """Where along the rollout a scorer stops ranking. scores (B, N); errors {name: (B, N)} (e.g. the
    next-state MSE and the H-step label); steps (B,) the rollout step of each state ->
    {"<name>/spearman": {t: mean Spearman over the states at step t},
     "<name>/best_pick": {t: share of those states where the top-scored candidate has the least error}}."""
    top = scores.argmax(1, keepdim=True)
    out: dict[str, dict[int, float]] = {}
    for name, err in errors.items():
        rho = spearman(scores, err)
        hit = (err.gather(1, top).squeeze(1) <= err.min(1).values).float()
        at = {int(t): steps == t for t in steps.unique()}
        out[f"{name}/spearman"] = {t: float(rho[m].mean()) for t, m in at.items()}
        out[f"{name}/best_pick"] = {t: float(hit[m].mean()) for t, m in at.items()}
    return out


def ranking_curves(scores_per_step: list[torch.Tensor], errors: dict[str, list[torch.Tensor]]) -> dict[str, dict[int, float]]:
    """ranking_by_step for a TTC run's record of one (B_t, N) scores tensor per rollout step (step t + 1
    for list entry t) and, per yardstick name (e.g. "next", "horizon"), the same steps' (B_t, N)
    errors; steps without candidates to rank (N < 2) are skipped."""
    kept = [t for t, s in enumerate(scores_per_step) if s.shape[1] > 1 and len(s)]
    if not kept:
        return {}
    steps = torch.cat([torch.full((len(scores_per_step[t]),), t + 1) for t in kept])
    return ranking_by_step(torch.cat([scores_per_step[t] for t in kept]),
                           {name: torch.cat([per_step[t] for t in kept]) for name, per_step in errors.items()}, steps)
