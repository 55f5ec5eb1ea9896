"""Double integrator x'' = u: state (position, velocity), zero-order-hold input.

Exact discretization over one step dt (u constant on the step):
    x_{k+1} = A x_k + B u_k,   A = [[1, dt], [0, 1]],   B = [dt^2 / 2, dt]^T.

Teacher: the minimum-energy sequence that reaches the target exactly *in this discrete system*.
Unrolling, x_T = A^T x0 + sum_k A^{T-1-k} B u_k = A^T x0 + C U with the reachability matrix
C = [A^{T-1} B, ..., A B, B] (n x T m). Minimizing |U|^2 subject to C U = d, d = target - A^T x0,
gives U* = C^T (C C^T)^{-1} d (the Gramian C C^T is invertible: the pair (A, B) is controllable for
T >= 2). U* is clipped to the bound only where it exceeds it, and the clip rate is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import PROBLEMS
from .base import ControlConfig, ControlProblem


@dataclass
class DoubleIntegratorConfig(ControlConfig):
    type: str = "double_integrator"
    dt: float = 0.33
    horizon: int = 15
    u_max: float = 4.0
    x0_range: float = 2.0  # initial and target states uniform in [-2, 2]^2
    success_threshold: float = 0.1
    q: float = 0.0
    r: float = 1.0
    qf: float = 100.0

    def validate(self):
        super().validate()
        if self.horizon < 2:
            raise ValueError("the double integrator needs horizon >= 2 to reach any target exactly")


@PROBLEMS.register("double_integrator")
class DoubleIntegrator(ControlProblem):
    Config = DoubleIntegratorConfig
    name = "double_integrator"
    n_state = 2

    def matrices(self, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
        dt = self.cfg.dt
        A = torch.tensor([[1.0, dt], [0.0, 1.0]], dtype=dtype)
        B = torch.tensor([[dt * dt / 2], [dt]], dtype=dtype)
        return A, B

    def step(self, x, u):
        A, B = self.matrices(x.dtype)
        return x @ A.T.to(x.device) + u @ B.T.to(x.device)

    def sample(self, n, gen):
        return self.uniform(n, gen), self.uniform(n, gen)

    def reachability(self, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (A^T, C) with C = [A^{T-1} B, ..., B] of shape (n, T m)."""
        A, B = self.matrices(dtype)
        powers = [torch.eye(2, dtype=dtype)]
        for _ in range(self.cfg.horizon):
            powers.append(A @ powers[-1])
        C = torch.cat([powers[self.cfg.horizon - 1 - k] @ B for k in range(self.cfg.horizon)], dim=1)
        return powers[-1], C

    def teacher(self, x0, target):
        AT, C = self.reachability(x0.dtype)
        d = target - x0 @ AT.T  # (B, n): what the controls must add to the free response
        # U* = C^T (C C^T)^{-1} d for every problem at once: solve the 2x2 Gramian system once.
        lam = torch.linalg.solve(C @ C.T, d.T)  # (n, B)
        u = (C.T @ lam).T.reshape(len(x0), self.cfg.horizon, 1)
        clipped = u.abs().amax(dim=(1, 2)) > self.cfg.u_max
        u = u.clamp(-self.cfg.u_max, self.cfg.u_max)
        return u, {"clip_rate": float(clipped.double().mean())}
