"""Per-trial time of the ARM-weights sweep with and without the cross-process controls cache.

Runs `sweeps/arm_weights.yaml` (its sampler, space and fixed settings; pruning off so every trial
does the same work) on a briefly trained operator of the default problem, alternating two sweeps
in one throwaway store:
  recompute  every trial rolls out baseline, random, ensemble and oracle itself (the behaviour
             before controls.py: the per-process memo was keyed by the comparison, which the ARM
             weights change, so it never hit across trials);
  cached     the stage as it is: each control is loaded from the run that first computed it.
Per-trial time is the Optuna trial duration, median and min over trials, leaving out each
sweep's first trial (warm-up; in `cached` it may compute the controls).

    python benchmarks/controls_cache.py [--trials 5] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PROJECT = {"base": str(REPO / "projects" / "euler1d.yaml"), "data": {"n_trajectories": 60},
           "model": {"type": "fno", "width": 16, "modes": 8, "layers": 3}, "train": {"epochs": 2}}


def durations(spec_path: Path) -> list[float]:
    from ttclab.sweep import load_spec
    from ttclab.sweep.study import StaleTrialHandler, open_storage, open_study
    from ttclab.tracking.store import Tracker

    s = load_spec(spec_path)
    trials = sorted((t for t in open_study(s, open_storage(s, None, StaleTrialHandler(Tracker(), s.name))).trials
                     if t.datetime_complete is not None), key=lambda t: t.number)
    return [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials[1:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5, help="trials per sweep")
    parser.add_argument("--repeats", type=int, default=1, help="alternating recompute/cached pairs")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ttclab-bench-controls-"))
    os.environ["TTCLAB_HOME"] = str(folder)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    from ttclab.stages import controls, ttc
    from ttclab.sweep import run_sweep

    project = folder / "bench.yaml"
    project.write_text(yaml.safe_dump(PROJECT))
    base = yaml.safe_load((REPO / "sweeps" / "arm_weights.yaml").read_text())
    cached_fn = ttc.control_cache.evaluated

    def recompute(ctx, run, key, name, project, compute, evaluate):
        return evaluate(compute())

    times: dict[str, list[float]] = {"recompute": [], "cached": []}
    for rep in range(args.repeats):
        for mode in times:
            ttc.control_cache.evaluated = recompute if mode == "recompute" else cached_fn
            controls._MEMO.clear()
            path = folder / f"{mode}-{rep}.yaml"
            path.write_text(yaml.safe_dump({**base, "name": path.stem, "project": str(project),
                                            "n_trials": args.trials, "pruner": {"type": "none"}}))
            run_sweep(path, quiet=True)
            times[mode] += durations(path)
            print(f"{mode}, repeat {rep}: trial s {', '.join(f'{t:.2f}' for t in durations(path))}", flush=True)
    med = {m: statistics.median(t) for m, t in times.items()}
    for m, t in times.items():
        print(f"{m:9s}: per-trial median {med[m]:.2f} s, min {min(t):.2f} s over {len(t)} trials")
    print(f"recompute / cached (median): {med['recompute'] / med['cached']:.2f}x")
    print(f"(store kept in {folder})", file=sys.stderr)


if __name__ == "__main__":
    main()
