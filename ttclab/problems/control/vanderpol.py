"""Forced Van der Pol oscillator, steered to the origin with a bounded input.

    x1' = x2,   x2' = mu (1 - x1^2) x2 - x1 + u,   |u| <= u_max,

discretized with classical RK4 over one step dt with u held constant (zero-order hold).

Teacher: the finite-horizon nonlinear optimal control problem
    min_U c(U)   s.t.  x_{k+1} = RK4(x_k, u_k),  |u_k| <= u_max      (c as in `base`)
solved by batched box-constrained iLQR (`ilqr`), warm-started from finite-horizon LQR on the
linearization at the origin (time-varying gains from the backward Riccati recursion, applied in
closed loop on the nonlinear system and clipped). iLQR only accepts cost decreases, so the teacher
is never worse than its LQR warm start, and every iterate respects the bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import PROBLEMS
from .base import ControlConfig, ControlProblem
from .ilqr import ilqr


@dataclass
class VanDerPolConfig(ControlConfig):
    type: str = "vanderpol"
    mu: float = 1.0
    dt: float = 0.05
    horizon: int = 100
    u_max: float = 2.0
    x0_range: float = 2.0  # initial states uniform in [-2, 2]^2; the target is the origin
    success_threshold: float = 0.2
    q: float = 1.0
    r: float = 0.1
    qf: float = 100.0
    teacher_iters: int = 100  # at most this many iLQR iterations (stops earlier once converged)

    def validate(self):
        super().validate()
        if self.teacher_iters < 0 or self.r <= 0:
            raise ValueError("need teacher_iters >= 0 and r > 0 (the teacher's Newton steps divide by it)")


@PROBLEMS.register("vanderpol")
class VanDerPol(ControlProblem):
    Config = VanDerPolConfig
    name = "vanderpol"
    n_state = 2

    def f(self, x, u):
        x1, x2 = x[..., 0], x[..., 1]
        return torch.stack([x2, self.cfg.mu * (1 - x1 * x1) * x2 - x1 + u[..., 0]], dim=-1)

    def step(self, x, u):
        h = self.cfg.dt
        k1 = self.f(x, u)
        k2 = self.f(x + 0.5 * h * k1, u)
        k3 = self.f(x + 0.5 * h * k2, u)
        k4 = self.f(x + h * k3, u)
        return x + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)

    def sample(self, n, gen):
        x0 = self.uniform(n, gen)
        return x0, torch.zeros_like(x0)

    def lqr_gains(self) -> torch.Tensor:
        """Finite-horizon discrete LQR on the RK4 map linearized at (x, u) = (0, 0) -> K (T, m, n).

        With A = dF/dx, B = dF/du, Q = dt q I, R = dt r I (the running weights of the cost) and
        P_T = qf I:  K_k = (R + B^T P B)^{-1} B^T P A,  P <- Q + A^T P (A - B K_k)."""
        c = self.cfg
        zero_x, zero_u = torch.zeros(1, 2, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)
        A, B = torch.autograd.functional.jacobian(self.step, (zero_x, zero_u))
        A, B = A[0, :, 0], B[0, :, 0]
        Q, R = c.dt * c.q * torch.eye(2, dtype=torch.float64), c.dt * c.r * torch.eye(1, dtype=torch.float64)
        P, gains = c.qf * torch.eye(2, dtype=torch.float64), []
        for _ in range(c.horizon):
            K = torch.linalg.solve(R + B.T @ P @ B, B.T @ P @ A)
            P = Q + A.T @ P @ (A - B @ K)
            gains.append(K)
        return torch.stack(gains[::-1])

    def lqr(self, x0, target) -> torch.Tensor:
        """Clipped closed-loop LQR on the nonlinear system -> controls (B, T, 1)."""
        K = self.lqr_gains().to(x0.dtype)
        x, us = x0, []
        for k in range(self.cfg.horizon):
            u = (-(x - target) @ K[k].T).clamp(-self.cfg.u_max, self.cfg.u_max)
            us.append(u)
            x = self.step(x, u)
        return torch.stack(us, dim=1)

    def teacher(self, x0, target):
        c = self.cfg
        with torch.no_grad():
            u_lqr = self.lqr(x0, target)
            traj = self.rollout(x0, u_lqr)
        lqr_cost = self.cost(traj, u_lqr, target)
        controls, cost, iters = ilqr(self, x0, target, u_lqr, c.teacher_iters)
        stats = {
            "lqr_cost_mean": float(lqr_cost.mean()),
            "lqr_success_rate": float(((traj[:, -1] - target).norm(dim=-1) < c.success_threshold).double().mean()),
            "improved_over_lqr_frac": float((cost < lqr_cost * (1 - 1e-9)).double().mean()),
            "ilqr_iterations": iters,
        }
        return controls, stats
