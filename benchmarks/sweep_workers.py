"""Sweep throughput, 1 worker vs 2 workers, measured side by side in one run.

Every sweep runs the same spec (TTC trials with random ARM weights, so every trial costs the same)
in one throwaway store; the operator is trained once and shared.
Throughput is finished trials per hour from the Optuna study's timestamps, leaving out each worker
process's first trial (imports and first-call warm-up), process start-up and the final report. Two workers
get half the cores each (TTCLAB_THREADS). One worker is measured both with torch using every core
and with one thread, and the faster is the baseline: on small TTC tensors torch's intra-op threads
can cost more than they give (much more when other processes share the cores).

    python benchmarks/sweep_workers.py [--trials 8] [--repeats 1]

Prints each measurement and the min/median ratio over repeats (target on a 2-core machine: >= 1.8x).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
# The default problem with a small, briefly trained operator (shared by all trials, trained in
# about a minute), and beam search (N = 16, K = 4), so a TTC trial computes for several seconds and
# the per-trial tracking overhead does not dominate (with ~1 s trials it does).
PROJECT = {
    "base": str(REPO / "projects" / "euler1d.yaml"),
    "data": {"n_trajectories": 60},
    "model": {"type": "fno", "width": 16, "modes": 8, "layers": 3},
    "train": {"epochs": 2},
}


def spec(name: str, project: Path, trials: int) -> dict:
    return {"name": name, "project": str(project), "stage": "ttc", "n_trials": trials,
            "objective": {"metric": "rollout_mse/h16", "direction": "minimize", "split": "val"},
            "sampler": {"type": "random", "seed": 0}, "pruner": {"type": "none"},
            "fixed": {"ttc.reward": "arm", "ttc.branching": 16, "ttc.beam": 4},
            "space": {"arm.w_mass": {"type": "float", "low": 0.0, "high": 10.0},
                      "arm.w_energy": {"type": "float", "low": 0.0, "high": 10.0}}}


def trials_per_hour(spec_path: Path) -> float:
    from ttclab.sweep import load_spec
    from ttclab.sweep.study import StaleTrialHandler, open_storage, open_study
    from ttclab.tracking.store import Tracker

    s = load_spec(spec_path)
    trials = [t for t in open_study(s, open_storage(s, None, StaleTrialHandler(Tracker(), s.name))).trials
              if t.datetime_complete is not None]
    firsts = {}
    for t in sorted(trials, key=lambda t: t.datetime_start):
        firsts.setdefault(t.user_attrs["ttclab.pid"], t.number)
    trials = [t for t in trials if t.number not in firsts.values()]
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
    cores = len(os.sched_getaffinity(0))
    setups = {f"1 worker x {cores} threads": (1, cores), "1 worker x 1 thread": (1, 1),
              f"2 workers x {max(1, cores // 2)} thread(s)": (2, None)}
    rates: dict[str, list[float]] = {name: [] for name in setups}
    for rep in range(args.repeats):
        for i, (name, (workers, threads)) in enumerate(setups.items()):
            if threads is not None:  # the in-process worker; worker processes get TTCLAB_THREADS
                torch.set_num_threads(threads)
            path = folder / f"bench-{i}-{rep}.yaml"
            path.write_text(yaml.safe_dump(spec(path.stem, project, args.trials)))
            run_sweep(path, workers=workers, quiet=True)
            rates[name].append(trials_per_hour(path))
            print(f"{name}, repeat {rep}: {rates[name][-1]:.0f} trials/hour", flush=True)
    # One ratio per repeat (its 2-worker rate over the better 1-worker rate of the same repeat), so a
    # burst of load from other jobs spoils one pair, not the summary: report min and median.
    names = list(setups)
    ratios = sorted(rates[names[2]][i] / max(rates[names[0]][i], rates[names[1]][i]) for i in range(args.repeats))
    print(f"sweep throughput on {cores} cores, {args.repeats} interleaved repeat(s): 2 workers / best 1 worker "
          f"min {ratios[0]:.2f}x, median {float(np.median(ratios)):.2f}x, max {ratios[-1]:.2f}x "
          f"(target >= 1.8x); load average {os.getloadavg()[0]:.1f}")
    print(f"(store kept in {folder})", file=sys.stderr)


if __name__ == "__main__":
    main()
