"""Batched box-constrained iLQR for the quadratic control cost of `base` (one input, m = 1).

Every iteration linearizes the dynamics along the current trajectories,
    dx_{k+1} = A_k dx_k + B_k du_k,   A_k = dF/dx, B_k = dF/du  (by autograd, batched),
and runs the Riccati-like backward pass of the Gauss-Newton model of
    c = dt sum_k (q |x_k - g|^2 + r u_k^2) + qf |x_T - g|^2 :
    Q_x  = 2 dt q e_k + A^T V_x          Q_u  = 2 dt r u_k + B^T V_x
    Q_xx = 2 dt q I + A^T V_xx A         Q_uu = 2 dt r + B^T V_xx B      Q_ux = B^T V_xx A
The box |u| <= u_max enters as in box-DDP (Tassa et al. 2014), which for a scalar input is exact:
the feed-forward step is the clamped minimizer d_k = clamp(u_k - Q_u / Q_uu) - u_k, and a step that
hits the bound gets no feedback (K_k = 0), otherwise K_k = -Q_ux / Q_uu. Then
    V_x  = Q_x + K^T Q_uu d + K^T Q_u + Q_ux^T d,    V_xx = Q_xx + K^T Q_uu K + K^T Q_ux + Q_ux^T K.
The forward pass u'_k = clamp(u_k + alpha d_k + K_k (x'_k - x_k)) tries all step sizes alpha for all
problems in one batched rollout and keeps, per problem, the cheapest one if it lowers the cost; so
each problem's cost is non-increasing and every iterate respects the bound.
"""

from __future__ import annotations

import torch

ALPHAS = (1.0, 0.5, 0.25, 0.1, 0.03, 0.01)


def linearize(problem, traj: torch.Tensor, controls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """traj (B, T+1, n), controls (B, T, m) -> A (B, T, n, n), B (B, T, n, m) along the trajectory.

    `step` acts on each row of a batch independently, so the gradient of the column sum of output i
    is row i of every sample's Jacobian at once: n backward passes instead of one per sample."""
    Bsz, T, m = controls.shape
    n = traj.shape[-1]
    x = traj[:, :-1].reshape(-1, n).detach().requires_grad_(True)
    u = controls.reshape(-1, m).detach().requires_grad_(True)
    with torch.enable_grad():
        y = problem.step(x, u)
        rows = [torch.autograd.grad(y[:, i].sum(), (x, u), retain_graph=i < n - 1) for i in range(n)]
    A = torch.stack([r[0] for r in rows], dim=1)  # A[s, i, j] = d y_i / d x_j
    B = torch.stack([r[1] for r in rows], dim=1)
    return A.view(Bsz, T, n, n), B.view(Bsz, T, n, m)


def backward_pass(problem, traj, controls, target) -> tuple[torch.Tensor, torch.Tensor]:
    """-> feed-forward steps d (B, T) and gains K (B, T, n) of the box-constrained Gauss-Newton model."""
    c = problem.cfg
    A, B = linearize(problem, traj, controls)
    B, u = B[..., 0], controls[..., 0]  # B (B, T, n), u (B, T): a scalar input
    err = traj - target[:, None]
    n, T = traj.shape[-1], controls.shape[1]
    V_x = 2 * c.qf * err[:, -1]
    V_xx = 2 * c.qf * torch.eye(n, dtype=traj.dtype).expand(len(traj), n, n)
    d, K = torch.zeros_like(u), torch.zeros_like(traj[:, :-1])
    eye_q = 2 * c.dt * c.q * torch.eye(n, dtype=traj.dtype)
    for k in reversed(range(T)):
        Ak, Bk = A[:, k], B[:, k]
        VA = V_xx @ Ak  # (B, n, n)
        Q_x = 2 * c.dt * c.q * err[:, k] + (Ak.transpose(1, 2) @ V_x[..., None])[..., 0]
        Q_u = 2 * c.dt * c.r * u[:, k] + (Bk * V_x).sum(-1)
        Q_xx = eye_q + Ak.transpose(1, 2) @ VA
        Q_uu = (2 * c.dt * c.r + (Bk[:, None, :] @ V_xx @ Bk[..., None])[:, 0, 0]).clamp_min(1e-12)
        Q_ux = (Bk[:, None, :] @ VA)[:, 0]  # (B, n)
        u_star = (u[:, k] - Q_u / Q_uu).clamp(-c.u_max, c.u_max)
        dk = u_star - u[:, k]
        free = (u_star.abs() < c.u_max).to(traj.dtype)
        Kk = -free[:, None] * Q_ux / Q_uu[:, None]
        V_x = Q_x + Kk * (Q_uu * dk + Q_u)[:, None] + Q_ux * dk[:, None]
        V_xx = Q_xx + Q_uu[:, None, None] * Kk[:, :, None] * Kk[:, None, :] + Kk[:, :, None] * Q_ux[:, None, :] \
            + Q_ux[:, :, None] * Kk[:, None, :]
        V_xx = 0.5 * (V_xx + V_xx.transpose(1, 2))
        d[:, k], K[:, k] = dk, Kk
    return d, K


def forward_pass(problem, x0, target, traj, controls, d, K) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Try every alpha in ALPHAS for every problem at once -> (controls, traj, cost) of each problem's
    cheapest candidate; shapes (S*B, ...) are folded back to (B, ...)."""
    S, Bsz = len(ALPHAS), len(x0)
    alpha = torch.tensor(ALPHAS, dtype=x0.dtype).repeat_interleave(Bsz)[:, None]  # (S*B, 1)
    rep = lambda t: t.repeat(S, *[1] * (t.dim() - 1))  # noqa: E731
    x, u_ref, x_ref, dd, KK = rep(x0), rep(controls[..., 0]), rep(traj), rep(d), rep(K)
    xs, us = [x], []
    for k in range(controls.shape[1]):
        u = (u_ref[:, k : k + 1] + alpha * dd[:, k : k + 1] + ((x - x_ref[:, k]) * KK[:, k]).sum(-1, keepdim=True))
        u = u.clamp(-problem.cfg.u_max, problem.cfg.u_max)
        x = problem.step(x, u)
        us.append(u)
        xs.append(x)
    U, X = torch.stack(us, 1), torch.stack(xs, 1)
    cost = problem.cost(X, U, rep(target)).view(S, Bsz)
    best = cost.argmin(0)
    pick = best * Bsz + torch.arange(Bsz)
    return U[pick], X[pick], cost[best, torch.arange(Bsz)]


@torch.no_grad()
def ilqr(problem, x0, target, controls, iters: int, tol: float = 1e-10) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Improve controls (B, T, 1) from a feasible start -> (controls, cost (B,), iterations run).
    Stops early once no problem's cost drops by more than `tol` relative."""
    traj = problem.rollout(x0, controls)
    cost = problem.cost(traj, controls, target)
    for it in range(iters):
        d, K = backward_pass(problem, traj, controls, target)
        U, X, c = forward_pass(problem, x0, target, traj, controls, d, K)
        better = c < cost
        controls = torch.where(better[:, None, None], U, controls)
        traj = torch.where(better[:, None, None], X, traj)
        gain = ((cost - torch.where(better, c, cost)) / cost.clamp_min(1e-12)).max()
        cost = torch.where(better, c, cost)
        if gain < tol:
            return controls, cost, it + 1
    return controls, cost, iters
