"""Sweep throughput, 1 worker vs 2 workers, measured side by side in one run.

Both sweeps run the same spec (TTC trials with random ARM weights on a small euler1d project, so
every trial costs the same) in one throwaway store; the operator is trained once and shared.
Throughput is finished trials per hour between the first trial's start and the last trial's end,
read from the Optuna study, so process start-up and the final report are not counted. One worker
uses every core (torch threads); two workers get half the cores each (TTCLAB_THREADS).

    python benchmarks/sweep_workers.py [--trials 8] [--repeats 1]

Prints each measurement and the ratio (target on a 2-core machine: >= 1.7x).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
# Small enough that the shared operator trains in well under a minute on CPU, large enough that a
# TTC trial (several seconds) dominates the per-trial tracking overhead, as in real sweeps.
PROJECT = {
    "base": str(REPO / "projects" / "euler1d.yaml"),
    "problem": {"type": "euler1d", "n_cells": 64, "n_snapshots": 33},
    "data": {"n_trajectories": 60},
    "model": {"type": "fno", "width": 16, "modes": 8, "layers": 3},
    "train": {"epochs": 3},
}


def spec(name: str, project: Path, trials: int) -> dict:
    return {"name": name, "project": str(project), "stage": "ttc", "n_trials": trials,
            "objective": {"metric": "rollout_mse/h16", "direction": "minimize", "split": "val"},
            "sampler": {"type": "random", "seed": 0}, "pruner": {"type": "none"},
            "fixed": {"ttc.reward": "arm", "ttc.branching": 5},
            "space": {"arm.w_mass": {"type": "float", "low": 0.0, "high": 10.0},
                      "arm.w_energy": {"type": "float", "low": 0.0, "high": 10.0}}}


def trials_per_hour(spec_path: Path) -> float:
    from ttclab.sweep import load_spec
    from ttclab.sweep.study import StaleTrialHandler, open_storage, open_study
    from ttclab.tracking.store import Tracker

    s = load_spec(spec_path)
    trials = [t for t in open_study(s, open_storage(s, None, StaleTrialHandler(Tracker(), s.name))).trials
              if t.datetime_complete is not None]
    span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    return len(trials) / span * 3600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8, help="trials per sweep")
    parser.add_argument("--repeats", type=int, default=1, help="alternating 1-worker/2-worker pairs")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ttclab-bench-sweep-"))
    os.environ["TTCLAB_HOME"] = str(folder)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    os.environ.pop("TTCLAB_THREADS", None)
    from ttclab.sweep import run_sweep

    project = folder / "bench.yaml"
    project.write_text(yaml.safe_dump(PROJECT))
    rates: dict[int, list[float]] = {1: [], 2: []}
    for rep in range(args.repeats):
        for workers in (1, 2):
            path = folder / f"bench-{workers}w-{rep}.yaml"
            path.write_text(yaml.safe_dump(spec(path.stem, project, args.trials)))
            run_sweep(path, workers=workers, quiet=True)
            rates[workers].append(trials_per_hour(path))
            print(f"{workers} worker(s), repeat {rep}: {rates[workers][-1]:.0f} trials/hour", flush=True)
    one, two = (sum(r) / len(r) for r in (rates[1], rates[2]))
    cores = len(os.sched_getaffinity(0))
    print(f"sweep throughput on {cores} cores: 1 worker {one:.0f}/h, 2 workers {two:.0f}/h, "
          f"ratio {two / one:.2f}x (target >= 1.7x)")
    print(f"(store kept in {folder})", file=sys.stderr)


if __name__ == "__main__":
    main()
