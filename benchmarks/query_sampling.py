"""Query sampling (train.query_sampling): optimizer-step time and activation memory of UPT training
at num_queries = 25%, 50%, 100% of the grid and dense decoding, measured side by side in one run.

    python benchmarks/query_sampling.py [--project projects/euler1d_upt.yaml] [--steps 30] [--batch 64]
                                        [--set key=value ...] [--device auto]

Each round runs one optimizer step of every setting in turn (a round-robin, so load on the shared
machine hits all alike); the table gives the median step time and its ratio to dense decoding, and
the bytes of the tensors autograd saves for backward (the activation memory, exact and device
independent; on CUDA also the peak allocated). Random inputs of the project's grid: the cost does not
depend on the values.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from ttclab.models import make_model
from ttclab.problems import make_problem
from ttclab.project import load_project
from ttclab.stages import resolve_device, configure_process
from ttclab.training.loop import TrainConfig
from ttclab.training.losses import upt_inverse
from ttclab.training.queries import QuerySamplingConfig

REPO = Path(__file__).resolve().parents[1]


def saved_bytes(fn) -> tuple[object, int]:
    """fn() -> (its result, bytes of the tensors autograd saved for backward while it ran)."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--project", default=str(REPO / "projects" / "euler1d_upt.yaml"))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    args = ap.parse_args()
    configure_process()
    device = resolve_device(args.device)
    cfg = load_project(args.project, args.sets)
    problem = make_problem(cfg.problem)
    torch.manual_seed(0)
    model = make_model(cfg.model, n_fields=problem.n_fields, ndim=problem.ndim).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    grid = problem.shape
    cells = int(torch.tensor(grid).prod())
    settings = {"dense": QuerySamplingConfig()}
    settings |= {f"{p}%": QuerySamplingConfig(True, max(1, cells * p // 100)) for p in (25, 50, 100)}
    g = torch.Generator().manual_seed(0)
    u0 = torch.randn(args.batch, problem.n_fields, *grid, generator=g).to(device)
    batch = {"u0": u0, "targets": torch.randn(args.batch, 1, problem.n_fields, *grid, generator=g).to(device),
             "epoch": 10, "batch_index": 0}
    times = {name: [] for name in settings}
    memory = {}
    for r in range(args.steps + 2):  # two warm-up rounds
        for name, qs in settings.items():
            tcfg = TrainConfig(loss="upt_inverse", lambda_inv_enc=cfg.train.lambda_inv_enc,
                               lambda_inv_dec=cfg.train.lambda_inv_dec, query_sampling=qs)
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            terms, nbytes = saved_bytes(lambda: upt_inverse(model, batch, tcfg))
            opt.zero_grad()
            terms["loss"].backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if r >= 2:
                times[name].append(time.perf_counter() - start)
            memory[name] = (nbytes, torch.cuda.max_memory_allocated() if device.type == "cuda" else None)
    dense = statistics.median(times["dense"])
    print(f"UPT {cfg.model}, grid {grid} ({cells} cells), batch {args.batch}, device {device}, "
          f"{args.steps} rounds\n")
    print("| decoding | queries | step time (median ms) | x dense | saved activations (MiB) | x dense |"
          + (" peak CUDA (MiB) |" if device.type == "cuda" else "") + "\n|---|---|---|---|---|---|"
          + ("---|" if device.type == "cuda" else ""))
    for name, qs in settings.items():
        t, (nb, peak) = statistics.median(times[name]), memory[name]
        print(f"| {name} | {qs.num_queries if qs.enabled else cells} | {1e3 * t:.1f} | {t / dense:.2f} | "
              f"{nb / 2**20:.1f} | {nb / memory['dense'][0]:.2f} |" + (f" {peak / 2**20:.0f} |" if peak else ""))


if __name__ == "__main__":
    main()
