"""Selectors: how the search turns the N candidates of each kept state into the states it keeps.

Every selector is a `Reward` subclass in the one REWARDS registry, which is the single source of
selector names (config validation, CLI help, the ttc stage's controls, the comparison table).
Contract (physical units, higher is better):
    reward.score(candidates (B, N, C, *X), prev (B, C, *X), truth (B, C, *X) | None) -> scores (B, N)
    reward.score_terms(...) -> (scores, {term: (B, N)} | None)   per-term diagnostics
`truth` is the ground-truth next state; only a reward with `needs_truth` (the oracle) may look at it.
Capabilities are class attributes, so they can be read without building one (a PRM needs a file);
an instance may refine one from its inputs (ARM's tolerance scales with its weights, the PRM's
operator passes depend on its anchor):
    deterministic             propose only the operator's deterministic step (N = 1), nothing to score
    aggregate                 "mean": keep the mean of the valid candidates instead of ranking them
    tolerance                 score spreads <= tolerance are a tie: the step falls back (see ttc.steps)
    abstains                  False: never fall back on a tie (the random reference has no opinion)
    operator_evals_per_state  operator passes the reward itself runs per scored state (cost)
    control                   rolled out next to every ttc run as a reference
    rank                      position in comparison tables (baseline first, the oracle ceiling last)
`make_reward(name, **deps)` builds one; each takes the dependencies it needs (problem, arm config,
prm_path, generator, device) as keyword arguments and ignores the rest. Adding a reward is one
subclass here or in its own module, e.g.
    @REWARDS.register("smooth")
    class Smoothness(Reward):
        rank = 35
        def score(self, candidates, prev, truth=None):
            return -candidates.diff(dim=-1).pow(2).flatten(2).mean(2)
"""

from __future__ import annotations

import torch

from ..registry import Registry

REWARDS: Registry = Registry("selector")


class Reward:
    name = ""
    deterministic = False
    aggregate: str | None = None
    tolerance = 0.0
    abstains = True
    operator_evals_per_state = 0
    needs_truth = False
    control = False
    rank = 50

    def __init__(self, **_):
        pass

    def score(self, candidates: torch.Tensor, prev: torch.Tensor, truth: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} ranks no candidates (aggregate={self.aggregate!r})")

    def score_terms(self, candidates, prev, truth=None) -> tuple[torch.Tensor, dict | None]:
        return self.score(candidates, prev, truth), None

    def __call__(self, candidates, prev, truth=None) -> torch.Tensor:
        return self.score(candidates, prev, truth)


def register(name: str):
    """REWARDS.register that also stamps the registry name on the class."""

    def deco(cls: type[Reward]) -> type[Reward]:
        cls.name = name
        return REWARDS.register(name)(cls)

    return deco


def make_reward(name: str, **deps) -> Reward:
    return REWARDS.get(name)(**deps)


def selector_names() -> list[str]:
    return sorted(REWARDS.names(), key=lambda n: (REWARDS.get(n).rank, n))


def control_names() -> list[str]:
    return [n for n in selector_names() if REWARDS.get(n).control]


@register("baseline")
class Baseline(Reward):
    """The plain rollout: the operator's deterministic step, one candidate, nothing to rank."""

    deterministic, aggregate, rank = True, "mean", 0


@register("random")
class RandomPick(Reward):
    """Uniform random scores: the pick a reward must beat to claim any credit."""

    abstains, control, rank = False, True, 10

    def __init__(self, generator: torch.Generator | None = None, **_):
        self.generator = generator

    def score(self, candidates, prev, truth=None):
        # drawn where the candidates are (a CPU draw copied over would stall a GPU search every step);
        # the generator must live on that device (stages/ttc.py seeds it on ctx.device)
        return torch.rand(candidates.shape[:2], generator=self.generator, device=candidates.device)


@register("ensemble")
class EnsembleMean(Reward):
    """The mean of the valid candidates: what averaging the samples alone gives."""

    aggregate, control, rank = "mean", True, 20


@register("oracle")
class Oracle(Reward):
    """-MSE to the true next state: the ceiling any reward could reach on these candidates."""

    needs_truth, control, rank = True, True, 90

    def score(self, candidates, prev, truth=None):
        if truth is None:
            raise ValueError("the oracle reward needs the ground-truth next state")
        return -((candidates - truth.unsqueeze(1)) ** 2).flatten(2).mean(dim=2)


from . import arm  # noqa: E402,F401  (registration)
from . import prm  # noqa: E402,F401  (registration)
