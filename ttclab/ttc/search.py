"""Reward-guided autoregressive rollouts: baseline, greedy (beam=1), beam search, and the reference
selectors (random pick, ensemble mean, oracle pick) on the very same candidates.

At step t every kept partial trajectory (beam) proposes N candidates (one batched forward pass for
all ICs x beams x candidates); a reward scores them against the current state; per IC the K best by
cumulative score survive. K = 1 is greedy. States stay in normalized units between steps (as in
the plain rollout), rewards see physical units.

Guardrails: a NaN/Inf candidate scores -inf and is never chosen; an IC whose candidates are all
invalid, or whose scores have collapsed (zero spread with N > 1), falls back to the deterministic
prediction for that step, and the fallback is counted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .. import sampling

SELECTORS = ("baseline", "random", "ensemble", "arm", "prm", "oracle")


@dataclass
class TTCConfig:
    reward: str = "arm"  # baseline | random | ensemble | arm | prm | oracle
    branching: int = 5  # N candidates per kept trajectory and step
    beam: int = 1  # K kept trajectories per IC; 1 = greedy
    project_conservation: bool = False  # shift each candidate onto the IC's conserved totals
    split: str = "test"  # val while tuning, test for reported numbers
    n_ics: int = 0  # 0 = every IC of the split
    horizons: tuple[int, ...] = (1, 4, 16)  # plus the final step

    def validate(self):
        if self.reward not in SELECTORS:
            raise ValueError(f"unknown reward {self.reward!r}; valid: {', '.join(SELECTORS)}")
        if self.branching < 1 or self.beam < 1 or self.n_ics < 0:
            raise ValueError("need branching >= 1, beam >= 1, n_ics >= 0")
        if self.split not in ("train", "val", "test"):
            raise ValueError("split must be train, val or test")


@dataclass
class SearchResult:
    trajectory: torch.Tensor  # (B, T+1, C, *X) physical units
    model_evals: int = 0  # operator forward samples, summed over ICs
    reward_evals: int = 0  # candidate scorings, summed over ICs
    fallbacks: int = 0  # (IC, step) pairs that fell back to the deterministic prediction
    wall_s: float = 0.0
    scores: list = field(default_factory=list)  # per step (rows, N) reward scores ...
    errors: list = field(default_factory=list)  # ... and the candidates' true MSE, for rank metrics
    terms: dict = field(default_factory=dict)  # reward term -> [chosen mean, all-candidate mean] sums


def _take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, M, ...), idx (B, K) -> (B, K, ...)."""
    return x.gather(1, idx.view(*idx.shape, *[1] * (x.ndim - 2)).expand(*idx.shape, *x.shape[2:]))


@torch.no_grad()
def search(model, normalizer, problem, truth: torch.Tensor, selector: str, reward=None, *, branching: int = 1,
           beam: int = 1, sampling_cfg=None, project: bool = False, generator=None, on_step=None) -> SearchResult:
    """truth (B, T+1, C, *X) physical; returns the selector's rollout from truth[:, 0].
    `on_step(t, state (B, C, *X))`, if given, sees the best kept state after every step t = 1..T
    (lets a sweep prune a trial mid-rollout)."""
    start = time.perf_counter()
    nd = problem.ndim
    b, steps = truth.shape[0], truth.shape[1] - 1
    deterministic = selector == "baseline"
    n = 1 if deterministic else branching
    k_keep = 1 if selector in ("baseline", "ensemble") else beam
    totals = problem.conserved(truth[:, 0]) if project else None

    def physical(cand_n, ic):
        """Normalized candidates (R, N, C, *X) of ICs `ic` (R,) -> (normalized, physical), projected
        onto the ICs' conserved totals when asked."""
        cand = normalizer.decode(cand_n, nd)
        if project:
            cand = problem.project_conserved(cand, {q: v[ic].unsqueeze(1) for q, v in totals.items()})
            cand_n = normalizer.encode(cand, nd)
        return cand_n, cand

    # frames[t]: kept states (B, Kt, C, *X) after step t; parents[t]: (B, Kt+1) index of the frame-t
    # state each survivor extends. Backtracking at the end avoids copying histories every step.
    frames = [normalizer.encode(truth[:, 0], nd).unsqueeze(1)]
    parents = []
    cum = truth.new_zeros(b, 1)
    out = SearchResult(trajectory=truth)
    for t in range(steps):
        kc = frames[-1].shape[1]
        ic = torch.arange(b, device=truth.device).repeat_interleave(kc)  # IC of each row
        x = frames[-1].flatten(0, 1)  # (B*Kc, C, *X)
        if deterministic:
            cand_n = model(x).unsqueeze(1)
        else:
            cand_n = sampling.candidates(model, x, n, sampling_cfg, generator)
        out.model_evals += x.shape[0] * n
        cand_n, cand = physical(cand_n, ic)
        valid = torch.isfinite(cand).flatten(2).all(dim=2)  # (B*Kc, N)
        if selector in ("baseline", "ensemble"):
            chosen, fallback = _mean_of_valid(cand_n, valid)
            scores = None
        else:
            step_truth = truth[ic, t + 1]
            scores = reward(torch.nan_to_num(cand), normalizer.decode(x, nd), step_truth)
            out.reward_evals += scores.numel()
            # A reward that runs the operator itself (the PRM's anchor) costs forward passes too.
            out.model_evals += getattr(reward, "operator_evals_per_state", 0) * x.shape[0]
            scores = torch.where(valid, scores, torch.full_like(scores, -torch.inf))
            fallback = _collapsed(scores, valid, selector, getattr(reward, "tolerance", 0.0))
            _record(out, scores, cand, step_truth, valid, getattr(reward, "last_terms", None))
        if fallback.any():
            # No usable candidate or no information in the scores: take the deterministic step
            # (projected like the candidates), give it every candidate slot and a tie score.
            det_n, _ = physical(model(x[fallback]).unsqueeze(1), ic[fallback])
            out.model_evals += int(fallback.sum())
            out.fallbacks += int(fallback.sum())
            if scores is None:
                chosen = chosen.clone()
                chosen[fallback] = det_n[:, 0]
            else:
                cand_n, scores = cand_n.clone(), scores.clone()
                cand_n[fallback] = det_n.expand(-1, n, *det_n.shape[2:])
                scores[fallback] = 0.0
        if scores is None:
            frames.append(chosen.unsqueeze(1))
            parents.append(torch.zeros(b, 1, dtype=torch.long, device=truth.device))
            if on_step is not None:
                on_step(t + 1, normalizer.decode(chosen, nd))
            continue
        total = (cum.reshape(-1, 1) + scores).view(b, kc * n)
        top = total.topk(min(k_keep, kc * n), dim=1)
        parent = top.indices // n  # which kept trajectory each survivor extends
        cum = top.values
        frames.append(_take(cand_n.view(b, kc, n, *cand_n.shape[2:]).flatten(1, 2), top.indices))
        parents.append(parent)
        if on_step is not None:
            on_step(t + 1, normalizer.decode(frames[-1][:, 0], nd))
    # topk sorts descending, so kept trajectory 0 has the best cumulative score: backtrack it.
    idx = torch.zeros(b, 1, dtype=torch.long, device=truth.device)
    best = [None] * len(frames)
    for t in range(len(frames) - 1, 0, -1):
        best[t] = _take(frames[t], idx)[:, 0]
        idx = parents[t - 1].gather(1, idx)
    best[0] = frames[0][:, 0]
    out.trajectory = normalizer.decode(torch.stack(best, dim=1), nd)
    out.wall_s = time.perf_counter() - start
    return out


def _mean_of_valid(cand_n: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ensemble mean over valid candidates (N = 1: the candidate itself); rows with no valid
    candidate are returned as fallbacks."""
    w = valid.to(cand_n.dtype).view(*valid.shape, *[1] * (cand_n.ndim - 2))
    mean = (torch.nan_to_num(cand_n) * w).sum(1) / w.sum(1).clamp_min(1.0)
    return mean, ~valid.any(dim=1)


def _collapsed(scores: torch.Tensor, valid: torch.Tensor, selector: str, tolerance: float) -> torch.Tensor:
    """Rows with no valid candidate, or (N > 1, not the random reference) whose valid scores lie
    within the reward's tolerance of each other: the reward carries no information there."""
    none_valid = ~valid.any(dim=1)
    if scores.shape[1] == 1 or selector == "random":
        return none_valid
    finite = torch.where(valid, scores, torch.nan)
    spread = finite.nan_to_num(nan=-torch.inf).amax(1) - finite.nan_to_num(nan=torch.inf).amin(1)
    return none_valid | (spread <= tolerance)


def _record(out: SearchResult, scores, cand, step_truth, valid, terms) -> None:
    errors = ((cand - step_truth.unsqueeze(1)) ** 2).flatten(2).mean(dim=2)
    keep = valid.all(dim=1)
    out.scores.append(scores[keep].cpu())
    out.errors.append(errors[keep].cpu())
    if terms is not None:
        pick = scores.argmax(dim=1, keepdim=True)
        for name, value in terms.items():
            chosen = value.gather(1, pick).mean()
            acc = out.terms.setdefault(name, [0.0, 0.0, 0])
            acc[0] += float(chosen)
            acc[1] += float(value.mean())
            acc[2] += 1
