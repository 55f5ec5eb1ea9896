"""Data-parallel training across processes started by `torchrun` (the process group and its helpers).

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; `init_from_env` joins the group (nccl on CUDA,
gloo on CPU), and the one loop (`loop.fit`) then trains data-parallel: each rank takes its share
of every epoch's batches (`shard`), gradients are averaged over ranks after each backward
(`average_gradients`, what DDP's reducer computes: g = (1/W) sum_r g_r), and only rank 0 logs and
writes checkpoints. With W ranks of per-process batch b, an optimizer step sees the same W*b
samples as one process with batch W*b, so the two runs follow the same loss curve.

Gradients are all-reduced explicitly rather than through `DistributedDataParallel`'s forward
hooks because the losses call more than `forward` (unrolled windows call it k times, the PRM and
the controller call their own methods), which DDP's hooks would not see.

`solo()` marks a block that runs in one process only (an upstream stage that rank 0 runs on
demand while the other ranks wait for its result): `active()` is False there.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import torch
import torch.distributed as dist

_SOLO = [0]  # depth of nested solo() blocks


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank: from the group once joined, else torchrun's RANK (0 outside torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def launched() -> bool:
    """True in a process that torchrun started with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """Training here is data-parallel: a group of > 1 ranks is joined and no solo() block is open."""
    return world_size() > 1 and not _SOLO[0]


def is_main() -> bool:
    """This process logs and writes (rank 0, or any process in a solo block or outside torchrun)."""
    return not active() or rank() == 0


def init_from_env(device: torch.device) -> torch.device:
    """Join torchrun's process group (nccl for CUDA, gloo for CPU) -> this rank's device
    (cuda:LOCAL_RANK on GPUs). Outside torchrun nothing happens and `device` is returned."""
    if not launched():
        return device
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def solo():
    """Train non-distributed inside the block (an upstream stage run by rank 0 alone)."""
    _SOLO[0] += 1
    try:
        yield
    finally:
        _SOLO[0] -= 1


def shard(batches: Iterable[dict], n_batches: int) -> Iterator[dict]:
    """Rank r's share of an epoch's `n_batches` batches: numbers r, r + W, r + 2W, ... for
    ceil(n_batches / W) rounds. Like DistributedSampler (which pads with samples from the start),
    a rank left without a batch in the last round takes one from the start again, so every rank
    makes the same number of steps. Every rank draws all batches, so a task whose batches come
    from a stateful generator (the PRM's, the controller's) stays in step on every rank."""
    w, r = world_size(), rank()
    picks = [(k * w + r) % n_batches for k in range(-(-n_batches // w))]
    wrapped = {j: None for j in picks[-1:] if j < r}  # the last round's pick, wrapped around to the start
    for i, batch in enumerate(batches):
        if i in wrapped:
            wrapped[i] = batch
        if i % w == r and i in picks:
            yield batch
    yield from (b for b in wrapped.values() if b is not None)


def steps(n_batches: int) -> int:
    """Optimizer steps per epoch when the epoch's n_batches are sharded over the ranks."""
    return -(-n_batches // world_size()) if active() else n_batches


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Rank 0's weights and buffers on every rank (as DDP does at construction), so the ranks start
    equal whatever their initialization or resume file."""
    if active():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)


def average_gradients(model: torch.nn.Module) -> None:
    """g <- (1/W) sum_r g_r for every parameter, in one all-reduce of the flattened gradients
    (a parameter without a gradient on this rank contributes zeros)."""
    if not active():
        return
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) if not g.is_complex() else torch.view_as_real(g).reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for p, g in zip(params, grads):
        view = torch.view_as_real(g) if g.is_complex() else g
        view.copy_(flat[offset : offset + view.numel()].view_as(view))
        offset += view.numel()
        p.grad = g


def _scalars(values: list[float]) -> torch.Tensor:
    # nccl reduces CUDA tensors only; gloo CPU ones.
    cuda = dist.get_backend() == "nccl"
    return torch.tensor(values, dtype=torch.float64, device=torch.cuda.current_device() if cuda else "cpu")


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over the ranks (the logged train loss of the whole global batch)."""
    if not active() or not values:
        return values
    t = _scalars(list(values.values()))
    dist.all_reduce(t)
    return dict(zip(values, (t / world_size()).tolist()))


def from_main(value: float) -> float:
    """Rank 0's value on every rank, so decisions taken on it (best epoch, early stop) agree."""
    if not active():
        return value
    t = _scalars([value])
    dist.broadcast(t, src=0)
    return float(t)
