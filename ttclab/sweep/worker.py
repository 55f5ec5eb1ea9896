"""A sweep worker: takes trials from the shared study until `n_trials` are spent. Each trial runs the
spec's stage once as a nested MLflow run under the sweep's parent run.

One worker runs inside `ttclab sweep`; with `--workers N` each worker is its own process,
`python -m ttclab.sweep '<job json>'` (see __main__.py), with its share of the cores (TTCLAB_THREADS).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from fnmatch import fnmatch
from typing import Callable

import optuna
from optuna.trial import TrialState

from ..config import ConfigError
from ..process import identity
from ..stages import Context, resolve_device
from ..tracking.store import Pruned, Tracker
from .spec import ParamSpec, SweepSpec, load_spec
from .study import BudgetLock, StaleTrialHandler, open_storage, open_study, recover_stale, retried, used


FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
# A worker process gets the store URLs (which may hold passwords) in its environment: its command
# line is readable by every user of the machine (`ps`), its environment only by the same user.
SECRET_ENV = {"storage": "TTCLAB_SWEEP_STORAGE", "tracking_uri": "TTCLAB_SWEEP_TRACKING_URI"}


class TrialFailed(Exception):
    """The stage raised: this trial is FAILED (and its run), the sweep goes on."""


@dataclass
class WorkerJob:
    spec: str  # spec file path
    storage: str | None
    tracking_uri: str | None
    parent_run: str
    n_trials: int
    device: str = "auto"
    index: int = 0  # worker number, varies the sampler seed


def suggest(trial: optuna.Trial, key: str, p: ParamSpec):
    if p.type == "categorical":
        return trial.suggest_categorical(key, p.choices)
    if p.type == "int":
        return trial.suggest_int(key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
    return trial.suggest_float(key, p.low, p.high, step=p.step, log=p.log)


def objective_values(spec: SweepSpec, outputs: dict, metrics: dict) -> list[float]:
    """Each objective from the stage's outputs, else from the run's logged metrics; the split may
    prefix the key (`val/rollout_mse/h16`)."""
    values = []
    for o in spec.objective:
        keys = [o.metric] + ([f"{spec.split}/{o.metric}"] if spec.split else [])
        found = [src[k] for k in keys for src in (outputs, metrics) if isinstance(src.get(k), (int, float))]
        if not found:
            logged = ", ".join(sorted(metrics)[:30])
            raise ConfigError(f"{spec.source}: objective.metric: stage {spec.stage!r} logged no {o.metric!r}; "
                              f"it logged: {logged}")
        values.append(float(found[0]))
    return values


def reporter(trial: optuna.Trial, spec: SweepSpec) -> Callable[[str, float, int], None]:
    """Feeds a stage's intermediate reports matching the objective into the pruner."""
    globs = [spec.objective[0].report_glob] + ([f"{spec.split}/{spec.objective[0].report_glob}"] if spec.split else [])

    def report(key: str, value: float, step: int) -> None:
        if any(fnmatch(key, g) for g in globs) and math.isfinite(value):
            trial.report(value, step)
            if trial.should_prune():
                raise Pruned(f"pruned at step {step} ({key}={value:.4g})")

    return report


def progress_line(spec: SweepSpec, study: optuna.Study, trial, n_trials: int) -> str:
    """One line per finished trial: number, state/value, best so far, budget spent."""
    if trial.state == TrialState.COMPLETE:
        what = "value " + ", ".join(f"{v:.4g}" for v in trial.values)
    elif trial.state == TrialState.FAIL:
        what = f"FAILED ({trial.user_attrs.get('ttclab.error', 'worker stopped')})"
    else:
        what = f"{trial.state.name}" + (f" at step {trial.last_step}" if trial.last_step is not None else "")
    if spec.multi:
        best = f"Pareto front: {len(study.best_trials)} trial(s)"
    else:
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        best = f"best {study.best_value:.4g} (trial {study.best_trial.number})" if complete else "no best yet"
    skip = retried(study)
    done = sum(1 for t in study.get_trials(deepcopy=False, states=FINISHED) if t.number not in skip)
    return f"[sweep {spec.name}] trial {trial.number} {what} | {best} | {done}/{n_trials} done"


def work(job: WorkerJob, on_trial: Callable[[str], None] | None = None) -> None:
    spec = load_spec(job.spec)
    tracker = Tracker(job.tracking_uri)
    handler = StaleTrialHandler(tracker, spec.name)
    storage = open_storage(spec, job.storage, handler)
    study = open_study(spec, storage, worker=job.index)
    ctx = Context(tracker, resolve_device(job.device), progress=False, parent=job.parent_run,
                  extra_tags={"ttclab.sweep": spec.name})
    lock = BudgetLock(spec, job.storage)
    current: list[int] = []

    def objective(trial: optuna.Trial):
        for key, value in identity().items():
            trial.set_user_attr(key, value)
        lock.release()  # the trial exists now, so other workers' budget counts include it
        current[:] = [trial.number]
        cfg = spec.config({k: suggest(trial, k, p) for k, p in spec.space.items()})
        tracker.reporter = None if spec.multi else reporter(trial, spec)
        try:
            run_id, outputs = ctx.run(spec.stage, cfg, tags={"ttclab.trial": str(trial.number)})
        except Pruned as err:
            raise optuna.TrialPruned(str(err)) from None
        except Exception as err:
            trial.set_user_attr("ttclab.error", f"{type(err).__name__}: {err}"[:300])
            raise TrialFailed(str(err)) from err
        finally:
            tracker.reporter = None
        trial.set_user_attr("ttclab.run_id", run_id)
        values = objective_values(spec, outputs, tracker.metrics(run_id))
        if not all(math.isfinite(v) for v in values):  # Optuna fails the trial; say why
            trial.set_user_attr("ttclab.error", f"non-finite objective {values}")
        return values if spec.multi else values[0]

    while True:
        waiting = None
        lock.acquire()
        try:
            recover_stale(study, storage, handler)
            current.clear()
            if used(study) >= job.n_trials:
                # On shared storage a trial still running may be a vanished host's: stay until it
                # finishes, or its heartbeat stops and this worker runs its retry.
                waiting = getattr(storage, "get_heartbeat_interval", lambda: None)()
                if waiting is None or not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                    return
            else:
                study.optimize(objective, n_trials=1, catch=(TrialFailed,))
        except KeyboardInterrupt:
            if current:  # Optuna failed the interrupted trial; enqueue it again for the next start
                handler(study, _trial(study, current[0]))
            raise
        finally:
            lock.release()
        if waiting is not None:
            time.sleep(waiting)
        elif on_trial is not None and current:
            on_trial(progress_line(spec, study, _trial(study, current[0]), job.n_trials))


def _trial(study: optuna.Study, number: int):
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def job_process(job: WorkerJob) -> tuple[str, dict[str, str]]:
    """(command-line JSON without the store URLs, environment entries that carry them)."""
    env = {SECRET_ENV[k]: getattr(job, k) for k in SECRET_ENV if getattr(job, k)}
    return json.dumps(asdict(replace(job, **{k: None for k in SECRET_ENV}))), env


def job_from_process(text: str) -> WorkerJob:
    """The inverse of job_process, read in the worker process."""
    job = WorkerJob(**json.loads(text))
    return replace(job, **{k: os.environ.get(v) for k, v in SECRET_ENV.items() if getattr(job, k) is None})

