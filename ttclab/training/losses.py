"""Training losses for the operator. Pure tensor functions with shape contracts."""

from __future__ import annotations

import torch


def unrolled_mse(model, u0: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """u0 (B, C, *X), targets (B, K, C, *X) -> scalar mean over K autoregressive steps of
    MSE(model^k(u0), u_k). K = 1 is the one-step loss; K > 1 trains on the model's own rollouts."""
    u, total = u0, 0.0
    for k in range(targets.shape[1]):
        u = model(u)
        total = total + torch.mean((u - targets[:, k]) ** 2)
    return total / targets.shape[1]
