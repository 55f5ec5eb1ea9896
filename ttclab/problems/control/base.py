"""Finite-horizon optimal control problems with bounded inputs and a known good answer (a teacher).

A problem instance is (x0, target). Controls are held for one step (zero-order hold), so a control
sequence U = (u_0 .. u_{T-1}) and the discrete map x_{k+1} = F(x_k, u_k) give a trajectory
x_0 .. x_T. Its cost, with weights from the problem YAML, is

    c(U) = dt * sum_{k<T} ( q |x_k - target|^2 + r |u_k|^2 ) + qf |x_T - target|^2

and a problem counts as solved when the final-state error |x_T - target| is below
`success_threshold`. Shapes: states (B, n), controls (B, T, m), trajectories (B, T+1, n);
everything is vectorized over the batch B of problems, only time is a loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SPLITS = ("train", "val", "test")


@dataclass
class ControlConfig:
    type: str = ""
    dt: float = 0.1
    horizon: int = 10  # T control steps
    u_max: float = 1.0  # |u_k| <= u_max
    x0_range: float = 2.0  # initial states uniform in [-x0_range, x0_range]^n
    success_threshold: float = 0.1  # on |x_T - target|
    q: float = 0.0  # running state-error weight
    r: float = 1.0  # control-effort weight
    qf: float = 100.0  # terminal-error weight
    n_train: int = 1000
    n_val: int = 200
    n_test: int = 1000
    data_seed: int = 0

    def validate(self):
        if self.dt <= 0 or self.horizon < 1 or self.u_max <= 0 or self.x0_range <= 0:
            raise ValueError("need dt > 0, horizon >= 1, u_max > 0, x0_range > 0")
        if self.success_threshold <= 0 or min(self.q, self.r, self.qf) < 0:
            raise ValueError("need success_threshold > 0 and non-negative cost weights q, r, qf")
        if min(self.n_train, self.n_val, self.n_test) < 1:
            raise ValueError("need at least one problem in each of n_train, n_val, n_test")


class ControlProblem:
    """Subclasses set `Config`, `name`, `n_state`, `n_control` and implement `step`, `sample`
    and `teacher`."""

    Config: type
    name: str
    n_state: int
    n_control: int = 1

    def __init__(self, cfg):
        self.cfg = cfg

    @property
    def dims(self) -> dict:
        """What a controller needs to know about the problem (keyword dims for `make_model`)."""
        c = self.cfg
        return dict(n_state=self.n_state, n_control=self.n_control, horizon=c.horizon, dt=c.dt, u_max=c.u_max)

    def step(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """x (B, n), u (B, m) -> x_{k+1} (B, n); differentiable in both."""
        raise NotImplementedError

    def sample(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n random problems -> x0 (n, n_state), target (n, n_state), float64."""
        raise NotImplementedError

    def teacher(self, x0: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """-> (controls (B, T, m) within the bound, {name: float} statistics of the solve)."""
        raise NotImplementedError

    def uniform(self, n: int, gen: torch.Generator) -> torch.Tensor:
        r = self.cfg.x0_range
        return (2 * torch.rand(n, self.n_state, generator=gen, dtype=torch.float64) - 1) * r

    def rollout(self, x0: torch.Tensor, controls: torch.Tensor) -> torch.Tensor:
        """x0 (B, n), controls (B, T, m) -> trajectory (B, T+1, n) including x0."""
        xs = [x0]
        for k in range(controls.shape[1]):
            xs.append(self.step(xs[-1], controls[:, k]))
        return torch.stack(xs, dim=1)

    def cost(self, traj: torch.Tensor, controls: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """traj (B, T+1, n), controls (B, T, m), target (B, n) -> c (B,) as in the module docstring."""
        c = self.cfg
        err2 = ((traj - target[:, None]) ** 2).sum(-1)  # (B, T+1)
        running = c.q * err2[:, :-1].sum(1) + c.r * (controls**2).sum((1, 2))
        return c.dt * running + c.qf * err2[:, -1]

    def evaluate(self, x0, target, controls) -> dict[str, torch.Tensor]:
        """Per-problem final error, effort (dt * sum u^2), cost and success; each (B,)."""
        traj = self.rollout(x0, controls)
        final_error = (traj[:, -1] - target).norm(dim=-1)
        return {
            "final_error": final_error,
            "effort": self.cfg.dt * (controls**2).sum((1, 2)),
            "cost": self.cost(traj, controls, target),
            "success": (final_error < self.cfg.success_threshold).to(traj.dtype),
        }

    def make_dataset(self) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
        """Seeded train/val/test problems with teacher controls, float64.

        -> ({split: {"x0", "target", "controls"}}, teacher statistics). All problems are drawn and
        solved in one vectorized batch; the splits are consecutive slices of it, so they are
        disjoint and each split is reproducible from `data_seed` alone."""
        c = self.cfg
        gen = torch.Generator().manual_seed(c.data_seed)
        sizes = (c.n_train, c.n_val, c.n_test)
        x0, target = self.sample(sum(sizes), gen)
        controls, stats = self.teacher(x0, target)
        data, start = {}, 0
        for split, size in zip(SPLITS, sizes):
            sl = slice(start, start + size)
            data[split] = {"x0": x0[sl], "target": target[sl], "controls": controls[sl]}
            start += size
        return data, stats
