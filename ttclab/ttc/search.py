"""Reward-guided autoregressive rollouts: one search for every selector in the REWARDS registry.

At step t every kept partial trajectory (beam) proposes N candidates (one batched forward pass for
all ICs x beams x candidates), the corrector projects them when asked, the guard marks NaN/Inf
candidates and abstaining (tied) rows, the reward scores them, fallback rows take the deterministic
step, and per IC the K best by cumulative score survive. The selector's capabilities pick the
special cases, each exact: K = 1 is greedy; `aggregate="mean"` keeps the ensemble mean (K = 1);
the baseline is deterministic, N = 1, its candidate its own mean, so it equals the plain rollout.
The parts are in ttc/steps.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..rewards import REWARDS, Reward, selector_names
from . import steps
from .rollout import ROLLOUTS, check_latent


# ttc keys that change only the run's own selector or its diagnostics, never a control rollout or
# which runs compare (stages/controls.py, stages/ttc.comparison_key).
SELECTOR_KEYS = ("reward", "project_conservation", "rank_horizon")


@dataclass
class TTCConfig:
    reward: str = "arm"  # a selector of the REWARDS registry (`ttclab ttc --help` lists them)
    branching: int = 5  # N candidates per kept trajectory and step
    beam: int = 1  # K kept trajectories per IC; 1 = greedy
    project_conservation: bool = False  # shift each candidate onto the IC's conserved totals
    split: str = "test"  # val while tuning, test for reported numbers
    n_ics: int = 0  # 0 = every IC of the split
    horizons: tuple[int, ...] = (1, 4, 16)  # plus the final step
    rollout: str = "physical"  # physical: re-encode fields every step; latent: step the latent (UPT only)
    corr_threshold: float = 0.8  # high-correlation time: first step with corr(rollout, truth) below this
    # > 0: also rank each step's candidates by their error rank_horizon steps later (each continued by
    # the deterministic operator, like triplets.label=horizon): H forward passes per candidate and
    # step, a diagnostic (cost/diagnostic_forward_per_step), not the selector's compute
    rank_horizon: int = 0

    def validate(self):
        if self.reward not in REWARDS:
            raise ValueError(f"unknown reward {self.reward!r}; valid: {', '.join(selector_names())}")
        if self.branching < 1 or self.beam < 1 or self.n_ics < 0 or any(h < 1 for h in self.horizons):
            raise ValueError("need branching >= 1, beam >= 1, n_ics >= 0 and horizons >= 1")
        if self.rank_horizon < 0:
            raise ValueError(f"rank_horizon must be >= 0 (0 = off), got {self.rank_horizon}")
        if not -1 < self.corr_threshold < 1:
            raise ValueError(f"corr_threshold must be in (-1, 1), got {self.corr_threshold}")
        if self.rollout not in ROLLOUTS:
            raise ValueError(f"rollout must be one of {', '.join(ROLLOUTS)}, got {self.rollout!r}")
        if self.split not in ("train", "val", "test"):
            raise ValueError("split must be train, val or test")


@dataclass
class SearchResult:
    trajectory: torch.Tensor  # (B, T+1, C, *X) physical units
    model_evals: int = 0  # operator forward samples (the reward's own passes included), summed over ICs
    reward_evals: int = 0  # candidate scorings, summed over ICs
    fallbacks: int = 0  # (row, step) pairs that fell back to the deterministic prediction
    projection_refused: int = 0  # projected states (candidates and fallbacks) left uncorrected ...
    projection_partial: int = 0  # ... and corrected only part of the way (steps.Corrector)
    wall_s: float = 0.0
    scores: list = field(default_factory=list)  # per step (rows, N) reward scores ...
    errors: list = field(default_factory=list)  # ... and the candidates' true MSE, for rank metrics
    ahead: list = field(default_factory=list)  # ... and their look_ahead errors (when search got one)
    terms: dict = field(default_factory=dict)  # reward term -> [chosen sum, all-candidate sum, count]


@torch.no_grad()
def search(model, normalizer, problem, truth: torch.Tensor, reward: Reward, *, branching: int = 1, beam: int = 1,
           sampling_cfg=None, project: bool = False, generator=None, on_step=None,
           rollout: str = "physical", look_ahead=None) -> SearchResult:
    """truth (B, T+1, C, *X) physical; returns `reward`'s rollout from truth[:, 0], `rollout` physical
    (fields are the state) or latent (ttc/rollout.py: encoded once, candidates step the kept latents).
    `on_step(t, state (B, C, *X))`, if given, sees the best kept state after every step t = 1..T
    (lets a sweep prune a trial mid-rollout). `look_ahead(t, cand (R, N, C, *X) physical, ic (R,))`,
    if given, returns (R, N) errors of every scored step's candidates by another yardstick (e.g. H
    steps later), recorded next to their next-state errors for rank diagnostics."""
    start = time.perf_counter()
    nd, b, n_steps = problem.ndim, truth.shape[0], truth.shape[1] - 1
    n = 1 if reward.deterministic else branching
    k = 1 if reward.aggregate else beam
    keep = steps.KEEP[reward.aggregate]
    correct = steps.Corrector(problem, normalizer, problem.conserved(truth[:, 0]) if project else None)
    frames, parents = [normalizer.encode(truth[:, 0], nd).unsqueeze(1)], []
    z = None  # latent rollouts: each kept row's latent, rows (R, *L)
    if rollout == "latent":
        check_latent(model)
        z = model.encode(frames[0][:, 0])
    cum = truth.new_zeros(b, 1)
    out = SearchResult(trajectory=truth)
    for t in range(n_steps):
        ic = torch.arange(b, device=truth.device).repeat_interleave(frames[-1].shape[1])  # IC of each row
        x = frames[-1].flatten(0, 1)  # (R, C, *X)
        cand_n, cand_z = steps.propose(model, x, z, n, reward, sampling_cfg, generator)
        cand_n, cand = correct(cand_n, ic)
        out.model_evals += x.shape[0] * n
        valid, scores = steps.finite(cand), None
        if reward.aggregate is None:
            step_truth = truth[ic, t + 1]
            scores, terms, valid = steps.score(reward, cand, normalizer.decode(x, nd), step_truth, valid)
            out.reward_evals += scores.numel()
            out.model_evals += reward.operator_evals_per_state * x.shape[0]  # e.g. the PRM's anchor
            steps.record(out, scores, cand, step_truth, valid, terms)
            if look_ahead is not None:
                out.ahead.append(look_ahead(t, cand, ic))
        rows = steps.guard(scores, valid, reward)
        if rows.any():  # the one host sync per step: x[rows] needs the count
            cand_n, cand_z, valid, scores = steps.fall_back(model, correct, x, z, ic, rows, cand_n, cand_z, valid,
                                                            scores, b)
            out.model_evals += rows.sum()
            out.fallbacks += rows.sum()
        kept, parent, cum, slot = keep(cand_n, valid, scores, cum, b, k)
        kept, z = steps.carry(model, correct, kept, x, cand_z, slot, valid)
        frames.append(kept)
        parents.append(parent)
        if on_step is not None:
            on_step(t + 1, normalizer.decode(kept[:, 0], nd))
    steps.finish(out)
    out.trajectory = normalizer.decode(steps.backtrack(frames, parents), nd)
    out.projection_refused = int(correct.counts.get("refused", 0))
    out.projection_partial = int(correct.counts.get("partial", 0))
    out.wall_s = time.perf_counter() - start
    return out
