"""PRM supervision: triplet selection from ranked candidates and training (loss: PRM_LOSSES[prm.loss]).

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

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..metrics.prm import spearman, triplet_accuracy
from ..models.prm import PRM, PRMConfig
from .losses import PRM_LOSSES
from .loop import Task, fit


@dataclass
class TripletConfig:
    fraction: float = 0.125  # of the train ICs used for PRM supervision
    k: int = 16  # candidates drawn per state (100 at full scale; a small K keeps CPU builds short)
    stride: int = 1  # use every `stride`-th step of each trajectory as a state
    states: str = "rollout"  # rollout: the operator's own rollout states (as TTC meets them); truth; mixed: both
    label: str = "next"  # next: rank by the MSE to the true next state; horizon: after H more steps
    horizon: int = 4  # label=horizon: deterministic operator steps each candidate is continued
    label_reduce: str = "final"  # label=horizon: final = MSE at t+1+H, mean = mean MSE over t+1..t+1+H
    batch_size: int = 32  # states per batched pass (x k candidates); larger batches cost page faults
    seed: int = 0  # seeds the IC subset and the candidate noise

    def validate(self):
        if not 0 < self.fraction <= 1:
            raise ValueError("fraction must lie in (0, 1]")
        if self.states not in ("rollout", "truth", "mixed"):
            raise ValueError(f"states must be rollout, truth or mixed (both), got {self.states!r}")
        if self.label not in ("next", "horizon") or self.label_reduce not in ("final", "mean") or self.horizon < 0:
            raise ValueError("need label next|horizon, label_reduce final|mean and horizon >= 0")
        if self.k < 3 or self.stride < 1 or self.batch_size < 1:
            raise ValueError("need k >= 3 (best, median, worst), stride >= 1 and batch_size >= 1")


@torch.no_grad()
def horizon_errors(step: Callable[[torch.Tensor], torch.Tensor], cands: torch.Tensor, future: torch.Tensor,
                   valid: torch.Tensor, reduce: str) -> torch.Tensor:
    """Look-ahead labels (Math-Shepherd style: a step is judged by where it leads). cands (S, K, C, *X)
    candidate next states; step maps a batch of states to the deterministic next states; future
    (S, H+1, C, *X) the true states at t+1..t+1+H, valid (S, H+1) False past the data's end.
    e_h = MSE(step^h(cand), future_h); label = e at the last valid h (final) or mean_h e_h over the
    valid h (mean) -> (S, K). Costs H forward passes per candidate; H = 0 is the next-state MSE."""
    s, k = cands.shape[:2]
    u, errs = cands, []
    for h in range(future.shape[1]):
        if h:
            u = step(u.flatten(0, 1)).view(u.shape)
        errs.append(((u - future[:, h : h + 1]) ** 2).flatten(2).mean(2))
    err = torch.stack(errs, -1)  # (S, K, H+1)
    if reduce == "mean":
        mask = valid.unsqueeze(1).to(err.dtype)
        return (err * mask).sum(-1) / mask.sum(-1)
    last = valid.long().sum(1) - 1
    return err.gather(-1, last.view(s, 1, 1).expand(s, k, 1)).squeeze(-1)


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


def set_batch(rows: dict, subset: torch.Tensor, triplet: torch.Tensor) -> dict:
    """Rows of a data dict -> a PRM_LOSSES batch: each state's drawn set of candidates
    (S, n, C, *X) and the positions (S, 3) of its best, median and worst within the set."""
    batch = {k: rows[k] for k in ("state", "truth", "anchor") if k in rows}
    return {**batch, "cands": gather_candidates(rows["cands"], subset), "triplet": triplet}


@torch.no_grad()
def evaluate(model: PRM, data: dict, sets: tuple, cfg: PRMConfig, device) -> float:
    """Mean training objective over fixed validation sets (the same draw every epoch)."""
    model.eval()
    subset, triplet = sets
    loss, total = PRM_LOSSES.get(cfg.loss), 0.0
    for i in range(0, len(subset), cfg.batch_size):
        sl = slice(i, i + cfg.batch_size)
        batch = set_batch(take(data, sl, device), subset[sl].to(device), triplet[sl].to(device))
        total += float(loss(model, batch, cfg)) * len(subset[sl])
    return total / max(len(subset), 1)


def validation(model: PRM, data: dict, sets: tuple, cfg: PRMConfig, device) -> dict[str, float]:
    """Held-out metrics of one epoch: val/objective (the training loss), val/spearman (mean per-state
    Spearman of the scores over all K candidates against -label) and val/triplet_acc, plus the
    selection criterion val/loss (lower is better): -val/spearman for select=ranking, since the
    objective is dominated by the reference-regression term and says little about the ranking;
    the objective for select=loss."""
    objective = evaluate(model, data, sets, cfg, device)
    scores = score_all(model, data, batch_size=cfg.batch_size, device=device)
    rho = float(spearman(scores, data["mse"]).mean())
    acc = triplet_accuracy(scores.gather(1, rank_triplet(data["mse"])))
    return {"val/loss": -rho if cfg.select == "ranking" else objective, "val/objective": objective,
            "val/spearman": rho, "val/triplet_acc": acc}


def train(model: PRM, train_data: dict, val_data: dict, cfg: PRMConfig, *, device="cpu",
          log: Callable[[dict, int], None] = lambda metrics, step: None,
          on_epoch: Callable[[int, dict, dict], None] = lambda epoch, val, state: None,
          progress: bool = True) -> dict:
    """Fit `model` on {state, cands, mse, truth[, anchor]} (module docstring) with the shared loop;
    validate each epoch (`validation`: objective on fixed random sets of the held-out states, ranking
    over all their candidates); the best weights by cfg.select (epoch 0, the untrained anchor,
    included) end up in `model`. -> {best_val, best_epoch, best_state, step, ...}."""
    gen = torch.Generator().manual_seed(cfg.seed)
    model.to(device)
    n = len(train_data["state"])
    sample = take(train_data, torch.randperm(n, generator=gen)[: 8 * cfg.batch_size], "cpu")
    model.fit_scale(sample["state"], sample["cands"], sample.get("anchor"))
    val_sets = draw_sets(val_data["mse"], cfg.set_size, torch.Generator().manual_seed(cfg.seed + 1))
    loss = PRM_LOSSES.get(cfg.loss)

    def batches(epoch):
        perm = torch.randperm(n, generator=gen)
        subset, triplet = draw_sets(train_data["mse"], cfg.set_size, gen)  # fresh sets every epoch
        for idx in perm.split(cfg.batch_size):
            yield set_batch(take(train_data, idx, device), subset[idx].to(device), triplet[idx].to(device))

    task = Task(loss=lambda model, batch: loss(model, batch, cfg), batches=batches,
                steps_per_epoch=math.ceil(n / cfg.batch_size),
                validate=lambda model: validation(model, val_data, val_sets, cfg, device))
    # Epoch 0 competes too: for the reference head it is the anchor alone (zero correction), so the
    # kept weights never rank held-out candidates worse (select=ranking) than the untrained anchor.
    return fit(model, task, cfg, seed=cfg.seed, device=device, log=log, on_epoch=on_epoch, progress=progress,
               desc="train_prm", validate_first=True)
