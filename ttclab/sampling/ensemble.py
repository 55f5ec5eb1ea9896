"""Deep ensemble as a candidate source: M operators of one config trained with seeds seed + i.

`Ensemble` speaks the part of the operator contract the search uses (models/operator.py):
    forward(u)             member 0's prediction, so the deterministic baseline is a named member
    sample_next(u, n, p)   n / M candidates from each member, member-major (candidate j comes from
                           member j // (n / M)), each member's share as one batched pass; with no
                           active perturbation member i contributes n / M copies of its forward(u),
                           with one (e.g. sampler `ensemble+latent_noise`) n / M noisy candidates
The ensemble-mean control then averages the members' predictions, the random control picks a
random member, and every reward ranks members (and their noisy variants) like any candidates.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError


class EnsembleError(UserError):
    """sampling.members / ttc.branching that cannot form an ensemble."""


class Ensemble(nn.Module):
    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if not members:
            raise EnsembleError("sampling.members must be >= 1")
        self.members = nn.ModuleList(members)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.members[0](u)

    def sample_next(self, u: torch.Tensor, n: int, perturbation=None, generator=None) -> torch.Tensor:
        m = len(self.members)
        if n % m:
            raise EnsembleError(f"ttc.branching={n} is not a multiple of sampling.members={m}: "
                                f"each member proposes N / M candidates; set ttc.branching to {m * max(1, n // m)}")
        return torch.cat([op.sample_next(u, n // m, perturbation, generator) for op in self.members], dim=1)


def member_seeds(seed: int, members: int) -> list[int]:
    """The training seeds of the M members: seed, seed + 1, ..., seed + M - 1 (member 0 = the plain operator)."""
    return [seed + i for i in range(members)]
