"""Optuna sweeps over dotted config keys: the only package that imports optuna.

    spec.py    YAML spec -> validated dataclasses, checked against the project config
    study.py   storage (journal file / RDB), sampler, pruner, trial budget, stale-trial recovery
    worker.py  the trial loop: one nested MLflow run per trial, pruning through run.report
    report.py  best trial, best_trial.json, Optuna figures, the test-split re-run of the best
    runner.py  `ttclab sweep`: parent run, shared upstream runs (from @stage inputs), worker processes
"""

from .runner import run_sweep
from .spec import SweepSpec, load_spec

__all__ = ["SweepSpec", "load_spec", "run_sweep"]
