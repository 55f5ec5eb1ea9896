"""Operator training: AdamW + cosine schedule, gradient clipping, validation each epoch, best weights
kept, and a resumable checkpoint after every epoch so a crash loses at most one epoch."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm import tqdm

from .losses import unrolled_mse


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    unroll: int = 1  # >1 trains on k-step autoregressive windows
    log_every: int = 20  # optimizer steps between train/loss points

    def validate(self):
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.unroll < 1:
            raise ValueError("need epochs >= 1, batch_size >= 1, lr > 0, unroll >= 1")


@torch.no_grad()
def evaluate(model, inputs, targets, batch_size: int, device) -> float:
    model.eval()
    total = 0.0
    for i in range(0, len(inputs), batch_size):
        x, y = inputs[i : i + batch_size].to(device), targets[i : i + batch_size].to(device)
        total += float(unrolled_mse(model, x, y)) * len(x)
    return total / max(len(inputs), 1)


def train(
    model: torch.nn.Module,
    train_pairs: tuple[torch.Tensor, torch.Tensor],
    val_pairs: tuple[torch.Tensor, torch.Tensor],
    cfg: TrainConfig,
    *,
    device="cpu",
    seed: int = 0,
    log: Callable[[dict, int], None] = lambda metrics, step: None,
    on_epoch: Callable[[int, float, dict], None] = lambda epoch, val, state: None,
    resume: dict | None = None,
    progress: bool = True,
) -> dict:
    """Pairs are normalized (inputs (M, C, *X), targets (M, K, C, *X)). Returns the final state:
    {"best_val", "best_state", "epoch", ...}; `on_epoch` gets the resumable state after each epoch."""
    torch.manual_seed(seed)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_pairs[0]) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    state = {"epoch": 0, "step": 0, "best_val": float("inf"), "best_state": None}
    if resume is not None:
        model.load_state_dict(resume["state_dict"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        state.update({k: resume[k] for k in ("epoch", "step", "best_val", "best_state")})
    inputs, targets = train_pairs
    bar = tqdm(total=cfg.epochs * steps_per_epoch, initial=state["step"], desc="train", disable=not progress)
    for epoch in range(state["epoch"], cfg.epochs):
        model.train()
        # The shuffle depends on (seed, epoch) alone, so a run resumed at any epoch sees the same
        # batches as an uninterrupted one (one generator seeded once would restart its sequence).
        perm = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        running, seen = 0.0, 0
        for i in range(0, len(inputs), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            loss = unrolled_mse(model, inputs[idx].to(device), targets[idx].to(device))
            optimizer_step(model, opt, sched, loss, cfg.grad_clip)
            state["step"] += 1
            running, seen = running + float(loss.detach()), seen + 1
            if state["step"] % cfg.log_every == 0:
                log({"train/loss": running / seen, "train/lr": sched.get_last_lr()[0]}, state["step"])
                bar.set_postfix(loss=f"{running / seen:.2e}")
                running, seen = 0.0, 0
            bar.update(1)
        val = evaluate(model, *val_pairs, cfg.batch_size, device)
        log({"val/loss": val, "epoch": epoch + 1}, state["step"])
        if val < state["best_val"]:
            state["best_val"] = val
            state["best_state"] = copy.deepcopy({k: v.cpu() for k, v in model.state_dict().items()})
        state["epoch"] = epoch + 1
        resumable = {
            **state,
            "state_dict": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
        }
        on_epoch(epoch + 1, val, resumable)
    bar.close()
    return state


def optimizer_step(model, opt, sched, loss: torch.Tensor, grad_clip: float) -> None:
    """One update shared by every training loop: backprop, clip the global gradient norm, step the
    optimizer and the per-step learning-rate schedule."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    sched.step()
