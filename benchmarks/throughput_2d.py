"""Training throughput of the 2D operator (projects/euler2d.yaml's model) at 64x64 and 128x128 on
whatever device is present: samples/s of forward + backward + AdamW steps through the one training
loop's precision step (loop.Precision, so train.amp is measured as training runs it), and peak memory
(CUDA: torch.cuda.max_memory_allocated; CPU: the process's peak RSS, which includes torch itself).

    python benchmarks/throughput_2d.py [--sizes 64,128] [--batch 8] [--steps 5] [--amp none,bf16]
                                       [--model fno|upt] [--compile] [--device auto|cpu|cuda]

Random normalized states stand in for data (throughput does not depend on the values). Runs
unchanged on a GPU (nccl/cuda not needed for one device). No MLflow, no files.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch

from ttclab.models import MODELS, make_model
from ttclab.project import load_project
from ttclab.training.loop import Precision, compile_errors

REPO = Path(__file__).resolve().parents[1]


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def bench(cfg, n: int, batch: int, steps: int, amp: str, compile: bool, device: torch.device) -> tuple[float, float]:
    torch.manual_seed(0)
    model = make_model(cfg.model, n_fields=4, ndim=2).to(device)
    forward = torch.compile(model) if compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0)
    precision = Precision(amp, device.type)
    u0, target = torch.randn(batch, 4, n, n, device=device), torch.randn(batch, 4, n, n, device=device)
    loss_fn = lambda m, b: torch.nn.functional.mse_loss(m(b[0]), b[1])  # noqa: E731
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(steps + 1):  # step 0 warms up (allocator, cuFFT plans, compilation)
        if i == 1:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        with compile_errors("throughput_2d", compile):
            precision.step(model, opt, sched, precision.loss(loss_fn, forward, (u0, target)), 1.0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * batch / (time.perf_counter() - start), peak_mb(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", default=str(REPO / "projects" / "euler2d.yaml"))
    ap.add_argument("--sizes", default="64,128")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--amp", default="none,bf16")
    ap.add_argument("--model", default=None, help="fno | upt (default: the project's; another at its defaults)")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    cfg = load_project(args.project)
    if args.model and args.model != cfg.model.type:  # another operator at its config defaults
        cfg.model = MODELS.get(args.model).Config(type=args.model)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {args.threads} thread(s)"
    print(f"{cfg.model.type} {cfg.model}\ndevice: {name}; batch {args.batch}; {args.steps} timed steps")
    print(f"{'grid':>9} {'amp':>5} {'samples/s':>10} {'peak MB':>9} {'vs none':>8}")
    for n in (int(s) for s in args.sizes.split(",")):
        base = None
        for amp in args.amp.split(","):
            rate, mem = bench(cfg, n, args.batch, args.steps, amp, args.compile, device)
            base = base or rate
            print(f"{n:>4}x{n:<4} {amp:>5} {rate:>10.1f} {mem:>9.0f} {rate / base:>7.2f}x", flush=True)


if __name__ == "__main__":
    main()
