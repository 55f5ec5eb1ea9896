"""Training the tiny recursive controller: behaviour cloning, process supervision, value loss.

Losses are pure tensor functions. Shapes: controls (B, T, m); costs (B, K+1) for the first guess
and K = H_cycles refinements; values (B, K+1). The total loss is
    bc + process_weight * process + value_weight * value.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch
from tqdm import tqdm

from ..config import build, to_dict
from ..models import MODELS, make_model
from ..problems import PROBLEMS, make_problem
from .loop import optimizer_step

FORMAT = "ttclab.trc/1"


@dataclass
class TRCConfig:
    epochs: int = 60
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    patience: int = 15  # stop after this many epochs without a better val cost; 0 = never
    process_weight: float = 0.0  # 0 = behaviour cloning only (tagged bc), > 0 = process supervision (ps)
    value_weight: float = 0.1
    eval_split: Literal["val", "test"] = "test"  # sweeps evaluate on val, final numbers on test
    log_every: int = 20  # optimizer steps between train/loss points

    def validate(self):
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.patience < 0:
            raise ValueError("need epochs >= 1, batch_size >= 1, lr > 0, patience >= 0")
        if self.process_weight < 0 or self.value_weight < 0:
            raise ValueError("need process_weight >= 0 and value_weight >= 0")

    @property
    def method(self) -> str:
        return "ps" if self.process_weight > 0 else "bc"


def bc_loss(final: torch.Tensor, teacher: torch.Tensor, u_max: float) -> torch.Tensor:
    """final, teacher (B, T, m) -> scalar MSE of the controls in units of the bound (so in [0, 4])."""
    return torch.mean(((final - teacher) / u_max) ** 2)


def iterate_costs(problem, x0: torch.Tensor, target: torch.Tensor, controls: list[torch.Tensor]) -> torch.Tensor:
    """The cost of every control sequence, rolled out through the differentiable dynamics in one
    batch: x0, target (B, n), K+1 sequences (B, T, m) -> costs (B, K+1)."""
    K1 = len(controls)
    U = torch.cat(controls, dim=0)
    x, g = x0.repeat(K1, 1), target.repeat(K1, 1)
    return problem.cost(problem.rollout(x, U), U, g).view(K1, len(x0)).T


def process_loss(costs: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """costs (B, K+1) >= 0; scale: a positive scalar or (B,) that must not depend on the model
    (e.g. the teacher's costs) -> scalar

        P = mean_b [ c_0 + sum_{k>=1} ( c_k + relu(c_k - c_{k-1}) ) ] / ((K+1) s).

    Every iterate's cost counts and every refinement step that makes the cost go up is penalized
    once more, so improvements c_{k-1} -> c_k are rewarded. The earlier system normalized by the
    model's own c_0, so making the first guess worse lowered its loss. Here the scale comes from
    the data, and the coefficient of each c_k is >= 0 wherever the loss is differentiable (c_0:
    1 - [c_1 > c_0]; c_k: 1 + [c_k > c_{k-1}] - [c_{k+1} > c_k]), so P is non-decreasing in c_0: a
    worse first guess never lowers it."""
    K1 = costs.shape[1]
    steps = costs[:, 1:] + torch.relu(costs[:, 1:] - costs[:, :-1])
    total = costs[:, 0] + steps.sum(1)
    return torch.mean(total / (K1 * scale.detach()))


def value_loss(values: torch.Tensor, costs: torch.Tensor) -> torch.Tensor:
    """values, costs (B, K+1) -> MSE between predicted and realized log(1 + cost). Costs are
    detached: the value head learns to predict the cost, it does not steer the controls. The log
    keeps the bad first guesses of early training from dominating."""
    return torch.mean((values - torch.log1p(costs.detach())) ** 2)


@torch.no_grad()
def with_teacher_cost(problem, data: dict) -> dict:
    """Add each split's per-problem teacher cost (the data-only scale of the process term)."""
    return {name: {**split, "teacher_cost": problem.evaluate(split["x0"], split["target"], split["controls"])["cost"]}
            for name, split in data.items()}


@torch.no_grad()
def predict(model, split: dict[str, torch.Tensor], device, batch: int = 1024) -> list[torch.Tensor]:
    """All K+1 control sequences for a split's problems -> list of (N, T, m) on the CPU."""
    model.eval()
    x0, target = split["x0"].float().to(device), split["target"].float().to(device)
    parts = [model(x0[i : i + batch], target[i : i + batch]).controls for i in range(0, len(x0), batch)]
    return [torch.cat([p[k] for p in parts]).cpu() for k in range(len(parts[0]))]


@torch.no_grad()
def validate_controller(model, problem, split, device) -> dict[str, float]:
    """val/loss = mean cost of the final controls / mean teacher cost (1 = as good as the teacher):
    the same yardstick whatever the loss weights, so early stopping and sweep pruning compare
    like with like."""
    final = predict(model, split, device)[-1].double()
    ev = problem.evaluate(split["x0"], split["target"], final)
    return {"val/loss": float(ev["cost"].mean() / split["teacher_cost"].mean()),
            "val/success_rate": float(ev["success"].mean()),
            "val/bc": float(bc_loss(final, split["controls"], problem.cfg.u_max))}


def fit(model, problem, data: dict, cfg: TRCConfig, *, device="cpu", seed: int = 0,
        log: Callable[[dict, int], None] = lambda metrics, step: None,
        on_epoch: Callable[[int, dict], None] = lambda epoch, val: None, progress: bool = True) -> dict:
    """data[split] = {"x0", "target", "controls", "teacher_cost"} (float64, CPU). Trains on train,
    keeps the weights with the lowest val/loss -> {"best_val", "best_state", "epoch", "step"}."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model.to(device)
    train = {k: v.float().to(device) for k, v in data["train"].items()}
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(train["x0"])
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    state = {"epoch": 0, "step": 0, "best_val": float("inf"), "best_state": None}
    u_max, needs_costs = problem.cfg.u_max, cfg.process_weight > 0 or cfg.value_weight > 0
    bar = tqdm(total=cfg.epochs * steps_per_epoch, desc=f"trc {cfg.method}", disable=not progress)
    stale, running = 0, {}
    for epoch in range(cfg.epochs):
        model.train()
        for idx in torch.randperm(n, generator=gen).split(cfg.batch_size):
            b = {k: v[idx.to(device)] for k, v in train.items()}
            out = model(b["x0"], b["target"])
            parts = {"bc": bc_loss(out.controls[-1], b["controls"], u_max)}
            if needs_costs:
                with torch.enable_grad() if cfg.process_weight > 0 else torch.no_grad():
                    costs = iterate_costs(problem, b["x0"], b["target"], out.controls)
                if cfg.process_weight > 0:
                    parts["process"] = process_loss(costs, b["teacher_cost"].mean())
                if cfg.value_weight > 0:
                    parts["value"] = value_loss(out.values, costs)
            weights = {"bc": 1.0, "process": cfg.process_weight, "value": cfg.value_weight}
            loss = sum(weights[k] * v for k, v in parts.items())
            optimizer_step(model, opt, sched, loss, cfg.grad_clip)
            state["step"] += 1
            for k, v in {"loss": loss, **parts}.items():
                running[k] = running.get(k, 0.0) + float(v.detach())
            if state["step"] % cfg.log_every == 0:
                means = {f"train/{k}": v / cfg.log_every for k, v in running.items()}
                log({**means, "train/lr": sched.get_last_lr()[0]}, state["step"])
                bar.set_postfix(loss=f"{running['loss'] / cfg.log_every:.3e}")
                running = {}
            bar.update(1)
        val = validate_controller(model, problem, data["val"], device)
        log({**val, "epoch": epoch + 1}, state["step"])
        state["epoch"] = epoch + 1
        if val["val/loss"] < state["best_val"]:
            state["best_val"], stale = val["val/loss"], 0
            state["best_state"] = copy.deepcopy({k: v.cpu() for k, v in model.state_dict().items()})
        else:
            stale += 1
        on_epoch(epoch + 1, val)
        if cfg.patience and stale >= cfg.patience:
            break
    bar.close()
    return state


def save_controller(path: str | Path, model, problem_cfg, model_cfg, **extra) -> Path:
    """Configs as dicts + weights, loadable with weights_only=True; temp file + rename so a crash
    never leaves a truncated checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"format": FORMAT, "problem": to_dict(problem_cfg), "model": to_dict(model_cfg),
            "state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, **extra}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)
    return path


def load_controller(path: str | Path, device="cpu"):
    """-> (controller in eval mode, its problem)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} checkpoint; train one with `ttclab trc`")
    problem = make_problem(build(PROBLEMS.get(blob["problem"]["type"]).Config, blob["problem"], str(path), "problem"))
    mcfg = build(MODELS.get(blob["model"]["type"]).Config, blob["model"], str(path), "model")
    model = make_model(mcfg, **problem.dims)
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval(), problem
