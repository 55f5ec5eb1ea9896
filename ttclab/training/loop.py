"""The one training loop (`fit`) and the operator's use of it (`train`).

`fit` does what every model's training shares: AdamW, a cosine schedule stepped per optimizer step,
global-norm gradient clipping, progress, validation after every epoch, the best weights kept (and
restored at the end), early stopping, and a resumable state after every epoch. A kind of training
supplies a `Task`: its loss (a registered loss of losses.py bound to its config), its batches and its
validation. The operator's task is below; triplet.py (PRM) and trc.py (controller) build theirs.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from functools import partial
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Literal

import torch

from ..progress import progress_bar
from . import distributed
from ..errors import UserError
from ..models import checkpoint
from ..models.checkpoint import CheckpointError
from .losses import OPERATOR_LOSSES
from .queries import QuerySamplingConfig
from .ttc_training import TrainingTTC, TTCTrainingConfig

# What a resumed run needs; best_epoch and stale are newer and default to 0 for older last.pt files.
RESUME_KEYS = ("state_dict", "optimizer", "scheduler", "epoch", "step", "best_val", "best_state")


class TrainingError(UserError):
    """Training produced no usable weights (e.g. a non-finite validation loss in every epoch)."""


@dataclass
class Task:
    loss: Callable[[torch.nn.Module, dict], torch.Tensor | dict]  # batch -> scalar or {"loss", terms}
    batches: Callable[[int], Iterable[dict]]  # epoch -> that epoch's batches, on the device
    steps_per_epoch: int  # len(batches(epoch)), for the schedule and the progress bar
    validate: Callable[[torch.nn.Module], dict[str, float]]  # -> metrics with "val/loss", lower is better


def fit(model: torch.nn.Module, task: Task, cfg, *, seed: int, device="cpu",
        log: Callable[[dict, int], None] = lambda metrics, step: None,
        on_epoch: Callable[[int, dict, dict], None] = lambda epoch, val, state: None,
        resume: dict | None = None, resume_source: str = "resume checkpoint", progress: bool = True,
        desc: str = "train", log_every: int = 0, patience: int = 0, validate_first: bool = False,
        amp: str = "none", compile: bool = False) -> dict:
    """Train `model` with cfg.epochs, cfg.lr, cfg.weight_decay, cfg.grad_clip.

    log_every > 0 logs train/<term> means every that many steps; 0 logs one epoch mean with the
    validation point. patience > 0 stops after that many epochs without a lower val/loss.
    validate_first lets epoch 0 (the untrained weights) compete for the best. `on_epoch(epoch, val,
    state)` gets the validation metrics and the resumable state (`resume` takes it back).
    amp (none | bf16 | fp16) runs the loss under autocast; compile runs it through torch.compile.
    Under torchrun (distributed.py) each rank trains on its shard of the batches with averaged
    gradients, and only rank 0 calls `log` and `on_epoch`; validation runs on every rank.
    -> {"epoch", "step", "best_val", "best_epoch", "best_state", "stale"}; the best weights are loaded."""
    torch.manual_seed(seed)
    model.to(device)
    main = distributed.is_main()
    log = log if main else (lambda metrics, step: None)
    steps_per_epoch = distributed.steps(task.steps_per_epoch)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    precision = Precision(amp, torch.device(device).type)
    forward = compiled(model, desc) if compile else model
    state = {"epoch": 0, "step": 0, "best_val": math.inf, "best_epoch": 0, "best_state": None, "stale": 0}
    if resume is not None:
        restore(model, opt, sched, state, resume, resume_source)
    distributed.broadcast_parameters(model)
    if resume is None and validate_first:
        val = task.validate(model)
        log({**val, "epoch": 0}, 0)
        keep_if_best(model, state, distributed.from_main(val["val/loss"]), 0)
    bar = progress_bar(cfg.epochs * steps_per_epoch, desc, initial=state["step"], disable=not (progress and main))
    for epoch in range(state["epoch"], cfg.epochs):
        model.train()
        sums, seen, epoch_loss = {}, 0, 0.0
        for batch in distributed.shard(task.batches(epoch), task.steps_per_epoch) if distributed.active() \
                else task.batches(epoch):
            with compile_errors(desc, compile):
                terms = precision.loss(task.loss, forward, batch)
                terms = terms if isinstance(terms, dict) else {"loss": terms}
                precision.step(model, opt, sched, terms["loss"], cfg.grad_clip)
            state["step"] += 1
            seen += 1
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            epoch_loss += float(terms["loss"].detach())
            if log_every and state["step"] % log_every == 0:
                log({**{f"train/{k}": v / seen for k, v in distributed.mean_over_ranks(sums).items()},
                     "train/lr": sched.get_last_lr()[0]}, state["step"])
                sums, seen = {}, 0
            bar.update(1)
        val = task.validate(model)
        val["val/loss"] = distributed.from_main(val["val/loss"])
        # One epoch mean when not logged per step (sums then span the whole epoch).
        trained = {} if log_every else {**{f"train/{k}": v / seen for k, v in distributed.mean_over_ranks(sums).items()},
                                        "train/lr": sched.get_last_lr()[0]}
        log({**trained, **val, "epoch": epoch + 1}, state["step"])
        bar.set_postfix(train=f"{epoch_loss / max(steps_per_epoch, 1):.3e}", val=f"{val['val/loss']:.3e}")
        state["epoch"] = epoch + 1
        keep_if_best(model, state, val["val/loss"], epoch + 1)
        if main:
            on_epoch(epoch + 1, val, {**state, "state_dict": model.state_dict(), "optimizer": opt.state_dict(),
                                      "scheduler": sched.state_dict()})
        if patience and state["stale"] >= patience:
            break
    bar.close()
    if state["best_state"] is None:
        raise TrainingError(f"{desc}: val/loss was not finite in any epoch; lower the learning rate or check "
                            "the data for NaN/Inf")
    model.load_state_dict(state["best_state"])
    return state


class Precision:
    """train.amp: the loss under torch.autocast in bf16 or fp16 (parameters, gradients and the
    optimizer stay fp32; models/fno.py keeps its FFTs in fp32). fp16 gradients underflow, so on
    CUDA a GradScaler multiplies the loss by a running scale s and unscales before clipping; on
    CPU there is no scaler (torch's is CUDA-only), so fp16 there runs unscaled."""

    def __init__(self, amp: str, device_type: str):
        self.dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        self.device_type = device_type
        self.scaler = (torch.amp.GradScaler("cuda") if self.dtype is torch.float16 and device_type == "cuda"
                       else None)

    def loss(self, loss_fn, model, batch):
        with torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None):
            return loss_fn(model, batch)

    def step(self, model, opt, sched, loss: torch.Tensor, grad_clip: float) -> None:
        """One update: backprop, average gradients over ranks, clip the global gradient norm, step the
        optimizer (skipped by the scaler when fp16 gradients overflowed) and the schedule."""
        opt.zero_grad(set_to_none=True)
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        distributed.average_gradients(model)
        if self.scaler is not None:
            self.scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if self.scaler is None:
            opt.step()
        else:
            self.scaler.step(opt)
            self.scaler.update()
        sched.step()


@contextmanager
def compile_errors(desc: str, enabled: bool):
    """With train.compile, an error inside the block (the compiler runs at the first forward and,
    for the backward graph, the first backward) is one line naming the key."""
    try:
        yield
    except Exception as err:
        if not enabled or isinstance(err, UserError):
            raise
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise TrainingError(f"{desc}: train.compile: torch.compile failed ({type(err).__name__}: {first}); "
                            "set train.compile=false") from None


def compiled(model: torch.nn.Module, desc: str):
    """torch.compile(model) for the training forward passes (weights shared with `model`, whose
    state_dict stays free of the compiler's prefix); failures surface at the first step."""
    try:
        return torch.compile(model)
    except Exception as err:
        raise TrainingError(f"{desc}: train.compile: torch.compile is unavailable here ({type(err).__name__}: "
                            f"{str(err).strip()[:200]}); set train.compile=false") from None


def keep_if_best(model, state: dict, val: float, epoch: int) -> None:
    """Copy the weights when `val` beats the best so far; otherwise count a stale epoch."""
    if val < state["best_val"]:
        state.update(best_val=val, best_epoch=epoch, stale=0,
                     best_state=copy.deepcopy({k: v.cpu() for k, v in model.state_dict().items()}))
    else:
        state["stale"] += 1


def restore(model, opt, sched, state: dict, resume: dict, source: str) -> None:
    """Load a resumable state; a file that lacks a key or holds another architecture's weights is a
    one-line CheckpointError naming the key or the first mismatching shapes."""
    missing = [k for k in RESUME_KEYS if k not in resume]
    if missing:
        raise CheckpointError(f"{source}: not a resumable checkpoint (no {missing[0]!r}); resume from the "
                              "model/last.pt of a train run, or drop --input resume to start afresh")
    bad = checkpoint.weights_mismatch(model, resume["state_dict"])
    if bad:
        raise CheckpointError(f"{source}: weights are for another architecture (first mismatch: {bad}, file vs "
                              "model); resume with the model config it was trained with, or drop --input resume")
    model.load_state_dict(resume["state_dict"])
    opt.load_state_dict(resume["optimizer"])
    sched.load_state_dict(resume["scheduler"])
    state.update({k: resume[k] for k in RESUME_KEYS[3:]})
    state.update(best_epoch=resume.get("best_epoch", 0), stale=resume.get("stale", 0))


@dataclass
class TrainConfig(TTCTrainingConfig):  # + the TTC-during-training keys (ttc_training.py), plain by default
    epochs: int = 20
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    unroll: int = 1  # >1 trains on k-step autoregressive windows
    log_every: int = 20  # optimizer steps between train/loss points
    loss: str = "unrolled_mse"  # an OPERATOR_LOSSES name (losses.py)
    amp: Literal["none", "bf16", "fp16"] = "none"  # autocast of the training loss (FFTs stay fp32)
    compile: bool = False  # torch.compile the model for the training forward passes
    # loss=upt_inverse (losses.py): inverse-loss weights, 0 for inverse_warmup_epochs, then a linear ramp
    # to the lambda over as many epochs, capped at inverse_max_weight, on every inverse_frequency-th batch
    lambda_inv_enc: float = 1.0
    lambda_inv_dec: float = 1.0
    inverse_warmup_epochs: int = 0
    inverse_max_weight: float = 1.0
    inverse_frequency: int = 1
    # loss=upt_inverse: decode at num_queries sampled cells per sample in training (queries.py)
    query_sampling: QuerySamplingConfig = field(default_factory=QuerySamplingConfig)

    def validate(self):
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.unroll < 1:
            raise ValueError("need epochs >= 1, batch_size >= 1, lr > 0, unroll >= 1")
        if self.loss not in OPERATOR_LOSSES:
            raise ValueError(f"loss must be one of {', '.join(OPERATOR_LOSSES.names())}, got {self.loss!r}")
        if min(self.lambda_inv_enc, self.lambda_inv_dec, self.inverse_max_weight, self.inverse_warmup_epochs) < 0 \
                or self.inverse_frequency < 1:
            raise ValueError("need lambda_inv_enc, lambda_inv_dec, inverse_max_weight, inverse_warmup_epochs >= 0 "
                             "and inverse_frequency >= 1")
        self.validate_ttc()
        if self.query_sampling.enabled and self.loss != "upt_inverse":
            raise ValueError("query_sampling decodes at sampled cells inside loss=upt_inverse; set loss=upt_inverse "
                             "(lambda_inv_enc=lambda_inv_dec=0 for the forward loss alone)")
        if self.loss_weighting == "reward" and self.loss != "unrolled_mse":
            raise ValueError("loss_weighting=reward weights the per-sample unrolled_mse; set loss=unrolled_mse")
        if self.target == "best_of_n" and (self.unroll != 1 or self.loss != "unrolled_mse"):
            raise ValueError("target=best_of_n regresses one step toward a candidate; set unroll=1, loss=unrolled_mse")


@torch.no_grad()
def evaluate(model, inputs, targets, batch_size: int, device, cfg: TrainConfig | None = None) -> float:
    """Mean training loss (cfg.loss, default unrolled MSE) over all pairs, batches weighted by size."""
    model.eval()
    cfg = cfg or TrainConfig()
    loss, total = OPERATOR_LOSSES.get(cfg.loss), 0.0
    for i in range(0, len(inputs), batch_size):
        batch = {"u0": inputs[i : i + batch_size].to(device), "targets": targets[i : i + batch_size].to(device)}
        terms = loss(model, batch, cfg)
        total += float(terms["loss"] if isinstance(terms, dict) else terms) * len(batch["u0"])
    return total / max(len(inputs), 1)


def train(model: torch.nn.Module, train_pairs: tuple[torch.Tensor, torch.Tensor],
          val_pairs: tuple[torch.Tensor, torch.Tensor], cfg: TrainConfig, *, device="cpu", seed: int = 0,
          log: Callable[[dict, int], None] = lambda metrics, step: None,
          on_epoch: Callable[[int, float, dict], None] = lambda epoch, val, state: None,
          resume: str | Path | None = None, progress: bool = True, scorers: dict | None = None) -> dict:
    """The operator on normalized pairs (inputs (M, C, *X), targets (M, K, C, *X)). `resume` is the
    path of a last.pt; `on_epoch(epoch, val/loss, resumable state)` is what writes one. `scorers`
    holds a ttc_training.Scorer per reward that cfg's TTC-during-training options use."""
    inputs, targets = train_pairs
    loss = OPERATOR_LOSSES.get(cfg.loss)
    ttc = TrainingTTC(cfg, scorers or {}, seed, log)
    steps_per_epoch = math.ceil(len(inputs) / cfg.batch_size)

    def batches(epoch):
        # The shuffle depends on (seed, epoch) alone, so a run resumed at any epoch sees the same
        # batches as an uninterrupted one (one generator seeded once would restart its sequence).
        perm = (ttc.order(model, inputs, epoch, device, epoch * steps_per_epoch) if cfg.sampling == "hard" else
                torch.randperm(len(inputs), generator=torch.Generator().manual_seed(seed * 100_003 + epoch)))
        for i, idx in enumerate(perm.split(cfg.batch_size)):  # epoch, batch_index: upt_inverse's curriculum
            yield {"u0": inputs[idx].to(device), "targets": targets[idx].to(device), "epoch": epoch, "batch_index": i}

    plain = cfg.loss_weighting == "none" and cfg.target == "truth"
    task = Task(loss=(lambda model, batch: loss(model, batch, cfg)) if plain else partial(ttc.loss, loss),
                batches=batches, steps_per_epoch=steps_per_epoch,
                validate=lambda model: {"val/loss": evaluate(model, *val_pairs, cfg.batch_size, device, cfg)})
    return fit(model, task, cfg, seed=seed, device=device, log=log, progress=progress, log_every=cfg.log_every,
               amp=cfg.amp, compile=cfg.compile,
               on_epoch=lambda epoch, val, state: on_epoch(epoch, val["val/loss"], state),
               resume=None if resume is None else checkpoint.read(resume), resume_source=str(resume))
