"""Training the tiny recursive controller: data, validation, checkpoints. The losses (behaviour
cloning, process supervision, value probe, halting head) are CONTROLLER_LOSSES "bc" and "ps"
(losses.py), with total
    bc_weight * bc + process_weight * process + value_weight * value + halt_weight * halt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch

from ..config import ConfigError, build, to_dict
from ..models import MODELS, checkpoint, make_model
from ..problems import PROBLEMS, make_problem
from .loop import Task
from .loop import fit as fit_loop
from .losses import CONTROLLER_LOSSES, bc_loss

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
    process_floor: Literal["none", "teacher"] = "none"  # teacher: costs below the teacher's earn nothing
    bc_weight: float = 1.0  # the behaviour-cloning anchor
    value_weight: float = 0.1
    halt_weight: float = 1.0  # halting head's loss (model.halting=act only)
    eval_split: Literal["val", "test"] = "test"  # sweeps evaluate on val, final numbers on test
    log_every: int = 20  # optimizer steps between train/loss points
    # Test-time compute (trc_test_time.py): more_cycles runs test_n * H_cycles cycles, best_of_n picks among
    # test_n refinements with control noise test_noise; test_verifier is the headline pick, all are logged.
    test_time: Literal["none", "more_cycles", "best_of_n"] = "none"
    test_n: int = 4
    test_noise: float = 0.3
    test_verifier: Literal["value", "oracle", "random"] = "value"

    def validate(self):
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.patience < 0:
            raise ValueError("need epochs >= 1, batch_size >= 1, lr > 0, patience >= 0")
        if min(self.process_weight, self.value_weight, self.bc_weight, self.halt_weight) < 0:
            raise ValueError("need trc.process_weight, bc_weight, value_weight and halt_weight >= 0")
        if self.test_n < 1 or self.test_noise < 0:
            raise ValueError("need trc.test_n >= 1 and trc.test_noise >= 0")

    @property
    def method(self) -> str:
        return "ps" if self.process_weight > 0 else "bc"


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
        on_epoch: Callable[[int, dict, dict], None] = lambda epoch, val, state: None, progress: bool = True) -> dict:
    """data[split] = {"x0", "target", "controls", "teacher_cost"} (float64, CPU). Trains on train with
    the shared loop and the controller loss of cfg.method (bc | ps), keeps the weights with the lowest val/loss (loaded
    into `model`) -> {"best_val", "best_state", "epoch", "step", ...}."""
    gen = torch.Generator().manual_seed(seed)
    train = {k: v.float().to(device) for k, v in data["train"].items()}
    n = len(train["x0"])
    loss = CONTROLLER_LOSSES.get(cfg.method)

    def batches(epoch):
        for idx in torch.randperm(n, generator=gen).split(cfg.batch_size):
            yield {k: v[idx.to(device)] for k, v in train.items()}

    task = Task(loss=lambda model, batch: loss(model, batch, cfg, problem), batches=batches,
                steps_per_epoch=math.ceil(n / cfg.batch_size),
                validate=lambda model: validate_controller(model, problem, data["val"], device))
    return fit_loop(model, task, cfg, seed=seed, device=device, log=log, on_epoch=on_epoch, progress=progress,
                    desc=f"trc {cfg.method}", log_every=cfg.log_every, patience=cfg.patience)


def save_controller(path: str | Path, model, problem_cfg, model_cfg, **extra) -> Path:
    """Configs as dicts + weights, loadable with weights_only=True, written atomically."""
    blob = {"format": FORMAT, "problem": to_dict(problem_cfg), "model": to_dict(model_cfg),
            "state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, **extra}
    return checkpoint.atomic_save(blob, path)


def load_controller(path: str | Path, device="cpu"):
    """-> (controller in eval mode, its problem). A file without an entry, with an invalid stored
    config or with weights of another shape is a one-line CheckpointError naming it."""
    fix = "train one with `ttclab trc`"
    blob = checkpoint.read(path, FORMAT, fix, kind="controller ", keys=("problem", "model", "state_dict"))
    try:
        problem = make_problem(build(PROBLEMS.get(blob["problem"]["type"]).Config, blob["problem"], str(path),
                                     "problem"))
        model = make_model(build(MODELS.get(blob["model"]["type"]).Config, blob["model"], str(path), "model"),
                           **problem.dims)
    except (ConfigError, KeyError) as err:  # UnknownName is a KeyError too
        raise checkpoint.CheckpointError(f"{path}: stored config is invalid ({err}); {fix}") from None
    bad = checkpoint.weights_mismatch(model, blob["state_dict"])
    if bad:
        raise checkpoint.CheckpointError(f"{path}: weights do not match the stored controller config (first "
                                         f"mismatch: {bad}); the file is corrupt or from another version")
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval(), problem
