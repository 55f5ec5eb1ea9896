"""Analytical reward model (ARM): physics penalties of a candidate relative to the current state.

Terms, each (B, N) and >= 0, read from the problem's declared physics:
    conservation  |Q(candidate) - Q(prev)| / integral |q(prev)|   for every conserved Q
    bc            the problem's boundary-condition violation (0 on periodic grids)
    positivity    sum over positive fields f of mean_x relu(-f) / mean_x |f_prev|
score = -(w_mass * mass + w_momentum * momentum(s) + w_energy * energy + w_bc * bc
          + w_positivity * positivity), higher is better.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import Reward, register


@dataclass
class ARMConfig:
    w_mass: float = 1.0
    w_momentum: float = 1.0
    w_energy: float = 1.0
    w_bc: float = 1.0
    w_positivity: float = 1.0

    def validate(self):
        if min(self.w_mass, self.w_momentum, self.w_energy, self.w_bc, self.w_positivity) < 0:
            raise ValueError("ARM weights must be >= 0")

    def weight(self, term: str) -> float:
        # momentum_x / momentum_y (2D) share the momentum weight
        return getattr(self, "w_" + term.split("_")[0])


def arm_terms(problem, candidates: torch.Tensor, prev: torch.Tensor) -> dict[str, torch.Tensor]:
    """candidates (B, N, C, *X), prev (B, C, *X) -> {term: (B, N)} penalties, physical units."""
    now = problem.conserved(candidates)
    before = problem.conserved(prev)
    scale = problem.conserved_scale(prev)
    terms = {k: (now[k] - before[k].unsqueeze(1)).abs() / scale[k].unsqueeze(1).clamp_min(1e-12) for k in now}
    terms["bc"] = problem.boundary_violation(candidates)
    space = tuple(range(-problem.ndim, 0))
    positivity = candidates.new_zeros(candidates.shape[:2])
    for name in problem.positive:
        c = problem.channel(name)
        ref = prev[:, c].abs().mean(dim=space).clamp_min(1e-12).unsqueeze(1)
        positivity = positivity + torch.relu(-candidates[:, :, c]).mean(dim=space) / ref
    terms["positivity"] = positivity
    return terms


def arm_score(terms: dict[str, torch.Tensor], cfg: ARMConfig) -> torch.Tensor:
    return -sum(cfg.weight(k) * v for k, v in terms.items())


@register("arm")
class ARM(Reward):
    """The physics penalties above; `score_terms` also returns them, so the search can log which
    term drove each choice."""

    rank = 30

    def __init__(self, problem=None, arm: ARMConfig | None = None, **_):
        self.problem, self.cfg = problem, arm or ARMConfig()
        # The terms are relative changes computed from float32 states: differences below ~1e-6 per
        # unit weight are round-off (e.g. after conservation projection), so the search treats
        # them as a tie. Scaled by the weights, so shrinking every weight cannot make ARM abstain.
        c = self.cfg
        self.tolerance = 1e-6 * (c.w_mass + c.w_momentum + c.w_energy + c.w_bc + c.w_positivity)

    def score_terms(self, candidates, prev, truth=None):
        terms = arm_terms(self.problem, candidates, prev)
        return arm_score(terms, self.cfg), terms

    def score(self, candidates, prev, truth=None):
        return self.score_terms(candidates, prev)[0]
