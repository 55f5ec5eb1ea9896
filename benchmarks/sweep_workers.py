"""Sweep throughput, 1 worker vs 2 workers, measured side by side in one run.

Every sweep runs the same spec (TTC trials with random ARM weights, so every trial costs the same)
in one throwaway store; the operator is trained once (by the first sweep) and shared. Each sweep is
a fresh `python -m ttclab sweep` process, as a user runs it: an in-process sweep would inherit this
script's warmed-up allocator and look faster than any real one (it did: 1.95 vs 2.8 s per trial,
before process.keep_freed_memory). Throughput is finished trials per hour from the Optuna study's
timestamps, leaving out each worker process's first trial (imports and first-call warm-up), process
start-up and the final report. Setups: one worker with one torch thread (ttclab's default), the
same with glibc's allocator untouched (TTCLAB_MALLOC=system), one worker with a thread per core, and
one worker per core with one thread each.

    python benchmarks/sweep_workers.py [--trials 8] [--repeats 1]

Prints each measurement and, over the interleaved repeats, min/median of the ratios (target on a
2-core machine: >= 1.8x over one worker).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
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
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds of every setup")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ttclab-bench-sweep-"))
    env = {**os.environ, "TTCLAB_HOME": str(folder), "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"}
    os.environ.update(env)
    project = folder / "bench.yaml"
    project.write_text(yaml.safe_dump(PROJECT))
    cores = len(os.sched_getaffinity(0))
    # name -> (workers, extra environment); a worker pool gets TTCLAB_THREADS = cores // workers itself
    setups = {"1 worker x 1 thread": (1, {"TTCLAB_THREADS": "1"}),
              "1 worker x 1 thread, system malloc": (1, {"TTCLAB_THREADS": "1", "TTCLAB_MALLOC": "system"}),
              f"1 worker x {cores} threads": (1, {"TTCLAB_THREADS": str(cores)}),
              f"{cores} workers x 1 thread": (cores, {})}
    rates: dict[str, list[float]] = {name: [] for name in setups}
    for rep in range(args.repeats):
        for i, (name, (workers, extra)) in enumerate(setups.items()):
            path = folder / f"bench-{i}-{rep}.yaml"
            path.write_text(yaml.safe_dump(spec(path.stem, project, args.trials)))
            subprocess.run([sys.executable, "-m", "ttclab", "sweep", str(path), "--workers", str(workers), "--quiet"],
                           env={**env, **extra}, check=True, stdout=subprocess.DEVNULL)
            rates[name].append(trials_per_hour(path))
            print(f"{name}, repeat {rep}: {rates[name][-1]:.0f} trials/hour", flush=True)
    one, system, threads, pool = (rates[n] for n in setups)

    def summary(label: str, num: list[float], den: list[float]) -> str:
        r = sorted(a / b for a, b in zip(num, den))
        return f"{label}: min {r[0]:.2f}x, median {float(np.median(r)):.2f}x, max {r[-1]:.2f}x"

    print(f"sweep throughput on {cores} cores, {args.repeats} interleaved repeat(s), load average "
          f"{os.getloadavg()[0]:.1f}:\n  " + "\n  ".join([
              summary(f"{cores} workers / 1 worker x 1 thread (target >= 1.8x)", pool, one),
              summary(f"{cores} workers / best 1 worker", pool, [max(a, b) for a, b in zip(one, threads)]),
              summary(f"1 worker x {cores} threads / 1 thread", threads, one),
              summary("tuned / system allocator, 1 worker x 1 thread", one, system)]))
    print(f"(store kept in {folder})", file=sys.stderr)


if __name__ == "__main__":
    main()
