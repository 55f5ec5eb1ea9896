"""The baseline: a deterministic autoregressive rollout of the operator.

    physical  u_{t+1} = D(A(E(u_t)), u_t)   the operator's forward, fields re-encoded every step
    latent    z_0 = E(u_0), z_{t+1} = A(z_t), u_t = D(z_t)   encoded once (operators with `absolute_decode`)
"""

from __future__ import annotations

import torch

from ..models.operator import OperatorError

ROLLOUTS = ("physical", "latent")


def check_latent(model) -> None:
    """Latent rollouts need a decoder that reads only the grid of its second argument (UPT): FNO's
    decode adds P(h) to the fields it was given, so it has no fields to decode from a latent alone."""
    if hasattr(model, "members"):
        raise OperatorError("ttc.rollout=latent cannot step a deep ensemble: its members have separate latent "
                            "spaces; set ttc.rollout=physical")
    if not getattr(model, "absolute_decode", False):
        raise OperatorError(f"ttc.rollout=latent needs an operator that decodes fields from its latent alone "
                            f"(model.type=upt), not {type(model).__name__}; set ttc.rollout=physical")


@torch.no_grad()
def rollout(model, u0: torch.Tensor, steps: int, batch_size: int = 512, mode: str = "physical") -> torch.Tensor:
    """u0 (B, C, *X) normalized -> trajectory (B, steps + 1, C, *X) including u0."""
    if mode == "latent":
        check_latent(model)
    out = []
    for i in range(0, u0.shape[0], batch_size):
        u = u0[i : i + batch_size]
        states, z = [u], model.encode(u) if mode == "latent" else None
        for _ in range(steps):
            if z is None:
                u = model(u)
            else:
                z = model.step(z)
                u = model.decode(z, u)
            states.append(u)
        out.append(torch.stack(states, dim=1))
    return torch.cat(out)
