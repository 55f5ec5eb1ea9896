"""The baseline: a deterministic autoregressive rollout of the operator."""

from __future__ import annotations

import torch


@torch.no_grad()
def rollout(model, u0: torch.Tensor, steps: int, batch_size: int = 512) -> torch.Tensor:
    """u0 (B, C, *X) normalized -> trajectory (B, steps + 1, C, *X) including u0."""
    out = []
    for i in range(0, u0.shape[0], batch_size):
        u = u0[i : i + batch_size]
        states = [u]
        for _ in range(steps):
            u = model(u)
            states.append(u)
        out.append(torch.stack(states, dim=1))
    return torch.cat(out)
