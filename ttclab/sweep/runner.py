"""`ttclab sweep SPEC`: validate the spec, open (or resume) the study and its MLflow parent run,
compute the shared upstream results once, run the workers, then log the results on the parent.

Running the same spec again continues the study to `n_trials` in total under the same parent run
(found by its tags); `fresh=True` deletes the stored study and starts a new parent run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from ..config import ConfigError
from ..process import Terminated
from ..stages import STAGES, Context, resolve_device
from ..tracking.store import Tracker
from .report import finalize
from .spec import SweepSpec, load_spec
from .study import BudgetLock, StaleTrialHandler, open_storage, open_study, recover_stale, storage_label, used
from .worker import FINISHED, WorkerJob, job_process, progress_line, work


def shared_upstream(spec: SweepSpec, cfg) -> list[str]:
    """The upstream stages of spec.stage (from the stage declarations) that no swept key changes, in
    run order: computed once before any worker starts, so parallel trials share one data set,
    operator, PRM or teacher solve instead of each worker making its own. A stage's inputs can
    depend on the config (ttc reads a PRM only when ttc.reward is prm), so the base config and each
    choice of every categorical swept key are asked."""
    variants = [cfg] + [spec.config({key: choice}) for key, param in spec.space.items()
                        if param.type == "categorical" for choice in param.choices]
    order: list[str] = []

    def visit(name: str, variant) -> None:
        for up in STAGES.get(name).needs(variant):
            visit(up, variant)
            if up not in order:
                order.append(up)

    for variant in variants:
        visit(spec.stage, variant)
    swept = {key.split(".")[0] for key in spec.space}
    return [name for name in order if not swept & set(STAGES.get(name).key)]


def run_sweep(spec_path: str | Path, *, workers: int = 1, n_trials: int | None = None, storage: str | None = None,
              fresh: bool = False, device: str = "auto", quiet: bool = False, tracking_uri: str | None = None) -> dict | None:
    """Run (or continue) a sweep; returns the best-trial summary logged as best_trial.json."""
    def say(line: str) -> None:
        if not quiet:
            print(line, flush=True)

    spec = load_spec(spec_path)
    total = n_trials or spec.n_trials
    if spec.sampler.type == "grid" and total > spec.grid_size():
        say(f"[sweep {spec.name}] the grid has {spec.grid_size()} points: running that many trials")
        total = spec.grid_size()
    if workers < 1:
        raise ConfigError("--workers must be >= 1")
    tracker = Tracker(tracking_uri)
    handler = StaleTrialHandler(tracker, spec.name)
    store = open_storage(spec, storage, handler)
    base = spec.config({})
    study = open_study(spec, store, fresh=fresh, fingerprint=base.key(*STAGES.get(spec.stage).key))
    stale = recover_stale(study, store, handler)
    say(f"[sweep {spec.name}] study in {storage_label(spec, storage)}: {used(study)}/{total} trials spent"
        + (f"; trials {stale} of a dead worker failed and queued again" if stale else ""))
    # Hosts starting together: the first to take the lock creates the parent run and the shared
    # upstream runs, the others then find them (tracker locks are this machine's only).
    lock = BudgetLock(spec, storage)
    lock.acquire()
    try:
        found = [] if fresh else tracker.runs({"ttclab.sweep": spec.name, "ttclab.stage": "sweep"})
        reopen = found[0].info.run_id if found else None
        tags = {"ttclab.sweep": spec.name, "ttclab.sweep.stage": spec.stage,
                "ttclab.sweep.storage": storage_label(spec, storage), "ttclab.sweep.n_trials": total}
        with tracker.start(base.name, "sweep", params={} if reopen else base.flat(), tags=tags, name=spec.name,
                           reopen=reopen) as parent:
            if reopen is None:
                parent.text(Path(spec.source).read_text(), "sweep.yaml")
            ctx = Context(tracker, resolve_device(device), progress=not quiet, parent=parent.id,
                          extra_tags={"ttclab.sweep": spec.name})
            for name in shared_upstream(spec, base):
                ctx.upstream(name, base)
            lock.release()
            job = WorkerJob(str(spec.source), storage, tracker.uri, parent.id, total, device)
            if workers == 1:
                work(job, on_trial=say)
            else:
                _run_workers(spec, job, workers, study, store, handler, say)
            say(f"[sweep {spec.name}] parent run {parent.id} (experiment ttclab/{base.name})")
            return finalize(spec, study, parent, ctx, say)
    finally:
        lock.release()


def _run_workers(spec: SweepSpec, job: WorkerJob, workers: int, study, store, handler, say) -> None:
    """N worker processes, each with its share of the cores; prints a line per finished trial and
    recovers the trial of a worker that dies, so a surviving worker retries it."""
    cores = len(os.sched_getaffinity(0))
    env = {**os.environ, "TTCLAB_THREADS": str(max(1, cores // workers))}
    procs = []
    for i in range(workers):
        argv, secrets = job_process(replace(job, index=i))
        procs.append(subprocess.Popen([sys.executable, "-m", "ttclab.sweep", argv], env={**env, **secrets}))
    shown = {t.number for t in study.get_trials(deepcopy=False, states=FINISHED)}
    exits: dict[int, int] = {}
    try:
        while len(exits) < len(procs):
            time.sleep(0.5)
            for i, proc in enumerate(procs):
                if i not in exits and proc.poll() is not None:
                    exits[i] = proc.returncode
                    if proc.returncode not in (0, 2):
                        recover_stale(study, store, handler)
                        say(f"[sweep {spec.name}] worker {i} stopped (exit {proc.returncode}); its trial is queued again")
            for trial in study.get_trials(deepcopy=False, states=FINISHED):
                if trial.number not in shown:
                    shown.add(trial.number)
                    say(progress_line(spec, study, trial, job.n_trials))
    except KeyboardInterrupt as err:
        for proc in procs:  # a terminal's Ctrl-C reached them too; a SIGTERM reached only this process
            if isinstance(err, Terminated) and proc.poll() is None:
                proc.terminate()
        for proc in procs:  # let them mark their trials for retry
            proc.wait()
        raise
    if all(code != 0 for code in exits.values()):
        raise ConfigError(f"{spec.source}: every sweep worker failed (exit codes {sorted(exits.values())}); "
                          "see the errors above")
