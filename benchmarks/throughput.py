"""Throughput of the default project's pipeline on this machine, measured in one run:

  solver     cell-updates/s of the reference solver, and wall time to generate the default data set
             (solve + HDF5 write, as `ttclab generate` does, without MLflow);
  training   samples/s of one training epoch (forward + backward + AdamW) on that data;
  forward    raw batched FNO inference (eval, no grad) at several batch sizes.

    python benchmarks/throughput.py [--project projects/euler1d.yaml] [--threads 1,2] [--set KEY=VALUE ...]

Each figure is measured once per torch thread count and printed side by side with the ratio, because
on a shared 2-core machine the second OpenMP thread can cost far more than it gains. No MLflow, no
files left behind. The load average is printed too: wall-clock figures are only comparable at
similar load; with one thread, CPU seconds approximate the wall time of an idle machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ttclab.data import pdebench
from ttclab.data.datasets import SplitData, channel_stats, make_splits
from ttclab.models import make_model
from ttclab.problems import make_problem
from ttclab.project import load_project
from ttclab.training.loop import train

REPO = Path(__file__).resolve().parents[1]


def bench_solver(cfg, problem, folder: Path) -> tuple[Path, dict]:
    steps = 0
    max_dt = problem.max_dt

    def counted(u):  # one call per SSP-RK3 step
        nonlocal steps
        steps += 1
        return max_dt(u)

    problem.max_dt = counted
    n = cfg.data.n_trajectories
    start, cpu = time.perf_counter(), time.process_time()
    traj = problem.solve(n, cfg.data.seed, progress=False)
    solve_s, solve_cpu = time.perf_counter() - start, time.process_time() - cpu
    splits = make_splits(n, cfg.data)
    mean, std = channel_stats(traj.fields[splits["train"]])
    meta = {f"split_{k}": v for k, v in splits.items()} | {"norm_mean": mean, "norm_std": std}
    path = pdebench.write(folder / f"{problem.name}.h5", problem, traj, meta)
    total_s = time.perf_counter() - start
    cells = math.prod(problem.shape)
    return path, {
        "trajectories": n, "cells": cells, "solver steps": steps, "snapshots": traj.fields.shape[1],
        "solve s": solve_s, "solve CPU s": solve_cpu, "generate s (solve + write)": total_s,
        "cell-updates/s": n * cells * steps / solve_s,
        "cell-updates/CPU s": n * cells * steps / solve_cpu,
    }


def bench_training(cfg, problem, path: Path) -> dict:
    data = SplitData(path, problem, cfg.data)
    ndim = problem.ndim
    x, y = data.pairs("train", cfg.train.unroll)
    pairs = data.normalizer.encode(x, ndim), data.normalizer.encode(y.flatten(0, 1), ndim).view(y.shape)
    vx, vy = data.pairs("val", cfg.train.unroll)
    val = data.normalizer.encode(vx, ndim), data.normalizer.encode(vy.flatten(0, 1), ndim).view(vy.shape)
    torch.manual_seed(cfg.seed)
    model = make_model(cfg.model, n_fields=problem.n_fields, ndim=ndim)
    # A few warm-up steps first: the first optimizer step pays one-off lazy imports (~seconds).
    warm = dataclasses.replace(cfg.train, epochs=1)
    train(model, (pairs[0][: 2 * warm.batch_size], pairs[1][: 2 * warm.batch_size]), val, warm, progress=False)
    start, cpu = time.perf_counter(), time.process_time()
    train(model, pairs, (val[0][:1], val[1][:1]), warm, progress=False)
    epoch_s, epoch_cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "train pairs/epoch": len(pairs[0]), "batch size": cfg.train.batch_size, "epoch s": epoch_s,
        "epoch CPU s": epoch_cpu, "samples/s": len(pairs[0]) / epoch_s,
        "samples/CPU s": len(pairs[0]) / epoch_cpu,
        f"estimated {cfg.train.epochs}-epoch training s": cfg.train.epochs * epoch_s,
    }


@torch.no_grad()
def bench_forward(cfg, problem, batch_sizes=(1, 64, 256, 1024), repeats=5) -> dict:
    torch.manual_seed(cfg.seed)
    model = make_model(cfg.model, n_fields=problem.n_fields, ndim=problem.ndim).eval()
    out = {}
    for b in batch_sizes:
        u = torch.randn(b, problem.n_fields, *problem.shape)
        model(u)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(u)
            times.append(time.perf_counter() - start)
        out[f"batch {b}: samples/s"] = b / statistics.median(times)
    return out


def measure(cfg, threads: int, folder: Path) -> dict[str, dict]:
    """All three sections with `threads` torch threads; sections print a progress line as they end."""
    torch.set_num_threads(threads)
    problem = make_problem(cfg.problem)  # fresh: bench_solver wraps its max_dt
    folder.mkdir()
    out = {}
    path, out["solver"] = bench_solver(cfg, problem, folder)
    print(f"  [{threads} threads] solver done", flush=True)
    out["training (one epoch, default batch size)"] = bench_training(cfg, problem, path)
    print(f"  [{threads} threads] training done", flush=True)
    out["FNO forward (eval, no grad)"] = bench_forward(cfg, problem)
    return out


def show(results: dict[int, dict[str, dict]]) -> None:
    """One column per thread count, and their ratio when there are two."""
    counts = list(results)
    header = f"{'':<38}" + "".join(f"{f'{t} thread(s)':>14}" for t in counts)
    print(header + (f"{f'ratio {counts[1]}/{counts[0]}':>12}" if len(counts) == 2 else ""))
    first = results[counts[0]]
    for section, figures in first.items():
        print(section)
        for key in figures:
            values = [results[t][section][key] for t in counts]
            row = f"  {key:<36}" + "".join(f"{v:>14,.3g}" if isinstance(v, float) else f"{v:>14,}" for v in values)
            if len(values) == 2 and isinstance(values[0], float):
                row += f"{values[1] / values[0]:>12.2f}"
            print(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default=str(REPO / "projects" / "euler1d.yaml"))
    parser.add_argument("--threads", default=f"1,{torch.get_num_threads()}",
                        help="comma-separated torch thread counts to measure side by side (default: 1 and "
                             "torch's default)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    counts = list(dict.fromkeys(int(t) for t in args.threads.split(",")))
    cfg = load_project(args.project, args.overrides)
    print(f"project {args.project}: {cfg.problem.type} {make_problem(cfg.problem).shape}, "
          f"{cfg.data.n_trajectories} trajectories; {cfg.model.type} width {cfg.model.width} modes "
          f"{cfg.model.modes} layers {cfg.model.layers}; torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="ttclab-bench-") as tmp:
        results = {t: measure(cfg, t, Path(tmp) / f"threads-{t}") for t in counts}
    print(f"load average at the end {os.getloadavg()[0]:.1f}\n")
    show(results)


if __name__ == "__main__":
    main()
