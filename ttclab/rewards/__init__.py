"""Reward models score candidate next states; the TTC controller keeps the best.

Contract (physical units, higher is better):
    reward(candidates (B, N, C, *X), prev (B, C, *X), truth (B, C, *X) | None) -> scores (B, N)
`truth` is the ground-truth next state; only the oracle reference may look at it.
Rewards are built by `make_reward(name, **deps)` from the REWARDS registry; each entry is a factory
taking the dependencies it needs (problem, configs, checkpoints) as keyword arguments.
"""

from __future__ import annotations

import torch

from ..registry import Registry

REWARDS: Registry = Registry("reward")


def make_reward(name: str, **deps):
    return REWARDS.get(name)(**deps)


@REWARDS.register("random")
def random_reward(generator: torch.Generator | None = None, **_):
    """Uniform random scores: the pick a reward must beat to claim any credit."""

    def score(candidates, prev, truth=None):
        return torch.rand(candidates.shape[:2], generator=generator).to(candidates.device)

    return score


@REWARDS.register("oracle")
def oracle_reward(**_):
    """-MSE to the true next state: the ceiling any reward could reach on these candidates."""

    def score(candidates, prev, truth=None):
        if truth is None:
            raise ValueError("the oracle reward needs the ground-truth next state")
        return -((candidates - truth.unsqueeze(1)) ** 2).flatten(2).mean(dim=2)

    return score


from . import arm  # noqa: E402,F401  (registration)
from . import prm  # noqa: E402,F401  (registration)
