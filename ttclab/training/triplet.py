"""PRM supervision: triplet selection from ranked candidates, the triplet margin loss, and training.

Data (one row per state, all tensors):
    state (S, C, *X)     current state, normalized with the operator's normalizer
    cands (S, K, C, *X)  K stochastic candidates for the next state, normalized
    mse   (S, K)         realized MSE of each candidate to the true next state (physical units)
    truth (S, C, *X)     the true next state, normalized
    anchor (S, C, *X)    the operator's deterministic prediction, normalized (anchor="operator")
Each optimizer step draws, per state, a random set of `set_size` of its K candidates (the set a TTC
step would score together), ranks the set by realized MSE and trains on its (best, median, worst).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm import tqdm

from ..models.prm import PRM, PRMConfig
from .loop import optimizer_step


@dataclass
class TripletConfig:
    fraction: float = 0.125  # of the train ICs used for PRM supervision
    k: int = 16  # candidates drawn per state (100 at full scale; a small K keeps CPU builds short)
    stride: int = 1  # use every `stride`-th step of each trajectory as a state
    states: str = "rollout"  # rollout: the operator's own rollout states (as TTC meets them); truth
    batch_size: int = 32  # states per batched pass (x k candidates); larger batches cost page faults
    seed: int = 0  # seeds the IC subset and the candidate noise

    def validate(self):
        if not 0 < self.fraction <= 1:
            raise ValueError("fraction must lie in (0, 1]")
        if self.states not in ("rollout", "truth"):
            raise ValueError(f"states must be rollout or truth, got {self.states!r}")
        if self.k < 3 or self.stride < 1 or self.batch_size < 1:
            raise ValueError("need k >= 3 (best, median, worst), stride >= 1 and batch_size >= 1")


def triplet_margin_loss(scores: torch.Tensor, margin: float) -> torch.Tensor:
    """scores (M, 3) of (best, median, worst) candidates -> scalar mean hinge loss
        L = mean_m [ relu(margin - (s_best - s_median)) + relu(margin - (s_median - s_worst)) ],
    zero exactly when s_best >= s_median + margin and s_median >= s_worst + margin for every row."""
    if scores.ndim != 2 or scores.shape[1] != 3:
        raise ValueError(f"triplet scores must be (M, 3) ordered (best, median, worst), got {tuple(scores.shape)}")
    gaps = scores[:, :2] - scores[:, 1:]  # (s_b - s_m, s_m - s_w)
    return torch.relu(margin - gaps).sum(1).mean()


def rank_triplet(mse: torch.Tensor) -> torch.Tensor:
    """mse (S, N) -> (S, 3) indices of the best, median (lower median for even N) and worst."""
    order = mse.argsort(1)
    n = mse.shape[1]
    return order[:, [0, (n - 1) // 2, n - 1]]


def draw_sets(mse: torch.Tensor, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per state, `size` distinct candidates of the K, uniformly at random -> (subset (S, size) of
    candidate indices, triplet (S, 3) positions within the subset). size == K keeps the full set."""
    k = mse.shape[1]
    subset = torch.rand(mse.shape, generator=generator).argsort(1)[:, : min(size, k)]
    return subset, rank_triplet(mse.gather(1, subset))


def gather_candidates(cands: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """cands (S, K, C, *X), idx (S, n) -> (S, n, C, *X)."""
    view = idx.view(*idx.shape, *[1] * (cands.ndim - 2)).expand(*idx.shape, *cands.shape[2:])
    return cands.gather(1, view)


def batch_loss(model: PRM, batch: dict, subset, triplet, cfg: PRMConfig) -> torch.Tensor:
    """Triplet margin loss on each state's set; for the reference head plus ref_weight times the
    MSE of the reference r to the true next state, in units of the candidate spread sigma (so the
    two terms have comparable scales whatever the noise level)."""
    scores, ref = model.score(batch["state"], gather_candidates(batch["cands"], subset), batch.get("anchor"))
    loss = triplet_margin_loss(scores.gather(1, triplet), cfg.margin)
    if ref is not None and cfg.ref_weight > 0:
        miss = (ref - batch["truth"]) / model.per_channel(model.dev_scale)
        loss = loss + cfg.ref_weight * miss.square().mean()
    return loss


@torch.no_grad()
def score_all(model: PRM, data: dict, cands: torch.Tensor | None = None, batch_size: int = 128,
              device="cpu") -> torch.Tensor:
    """Scores (S, N) of `cands` (default: all K candidates of `data`), each state's set scored together."""
    model.eval()
    cands = data["cands"] if cands is None else cands
    anchor = data.get("anchor")
    out = []
    for i in range(0, len(cands), batch_size):
        a = None if anchor is None else anchor[i : i + batch_size].to(device)
        out.append(model(data["state"][i : i + batch_size].to(device), cands[i : i + batch_size].to(device), a).cpu())
    return torch.cat(out)


def take(data: dict, idx, device) -> dict:
    """The rows `idx` (a slice or index tensor) of every tensor of a data dict, on `device`."""
    return {k: v[idx].to(device) for k, v in data.items()}


@torch.no_grad()
def evaluate(model: PRM, data: dict, sets: tuple, cfg: PRMConfig, device) -> float:
    """Mean training objective over fixed validation sets (the same draw every epoch)."""
    model.eval()
    subset, triplet = sets
    total = 0.0
    for i in range(0, len(subset), cfg.batch_size):
        sl = slice(i, i + cfg.batch_size)
        loss = batch_loss(model, take(data, sl, device), subset[sl].to(device), triplet[sl].to(device), cfg)
        total += float(loss) * len(subset[sl])
    return total / max(len(subset), 1)


def train(
    model: PRM,
    train_data: dict,
    val_data: dict,
    cfg: PRMConfig,
    *,
    device="cpu",
    log: Callable[[dict, int], None] = lambda metrics, step: None,
    on_epoch: Callable[[int, float], None] = lambda epoch, val: None,
    progress: bool = True,
) -> dict:
    """Fit `model` on {state, cands, mse, truth[, anchor]} (module docstring) with AdamW and a cosine
    schedule; validate each epoch on fixed random sets of the held-out states; keep the best weights
    (loaded into `model` at the end). -> {best_val, best_epoch, best_state, step}."""
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model.to(device)
    n = len(train_data["state"])
    sample = take(train_data, torch.randperm(n, generator=gen)[: 8 * cfg.batch_size], "cpu")
    model.fit_scale(sample["state"], sample["cands"], sample.get("anchor"))
    val_sets = draw_sets(val_data["mse"], cfg.set_size, torch.Generator().manual_seed(cfg.seed + 1))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    # Epoch 0 competes too: for the reference head it is the anchor alone (zero correction), so the
    # kept weights are never worse on validation than the untrained anchor.
    val = evaluate(model, val_data, val_sets, cfg, device)
    log({"val/loss": val, "epoch": 0}, 0)
    state = {"step": 0, "best_val": val, "best_epoch": 0,
             "best_state": copy.deepcopy({k: v.cpu() for k, v in model.state_dict().items()})}
    bar = tqdm(total=cfg.epochs * steps_per_epoch, desc="train_prm", disable=not progress)
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        subset, triplet = draw_sets(train_data["mse"], cfg.set_size, gen)  # fresh sets every epoch
        running = 0.0
        for i in range(0, n, cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            batch = take(train_data, idx, device)
            loss = batch_loss(model, batch, subset[idx].to(device), triplet[idx].to(device), cfg)
            optimizer_step(model, opt, sched, loss, cfg.grad_clip)
            state["step"] += 1
            running += float(loss.detach())
            bar.update(1)
        train_loss = running / steps_per_epoch
        val = evaluate(model, val_data, val_sets, cfg, device)
        bar.set_postfix(train=f"{train_loss:.3f}", val=f"{val:.3f}")
        log({"train/loss": train_loss, "val/loss": val, "epoch": epoch + 1}, state["step"])
        if val < state["best_val"]:
            state.update(best_val=val, best_epoch=epoch + 1,
                         best_state=copy.deepcopy({k: v.cpu() for k, v in model.state_dict().items()}))
        on_epoch(epoch + 1, val)
    bar.close()
    model.load_state_dict(state["best_state"])
    return state
