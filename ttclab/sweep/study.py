"""The Optuna side of a sweep: storage, sampler, pruner, the shared trial budget and stale trials.

Storage: by default a JournalStorage file under `<TTCLAB_HOME>/runs/sweeps/` (Optuna's own advice
for several processes on one machine; SQLite is not safe for parallel writers); any SQLAlchemy URL
(`postgresql+psycopg2://...`) gives an RDBStorage that workers on many machines share, with a
heartbeat so trials of a vanished worker are failed and retried.

Stale trials: every trial records the host, PID and PID start time of its worker. On each start and
before each new trial, a RUNNING trial whose worker process on this host is gone is failed, its
MLflow run closed (FAILED), and its parameters enqueued again (Optuna's retry callback, so the
retry carries `retry_history`). Retried trials do not count against `n_trials`.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage
from optuna.trial import TrialState

from ..config import ConfigError
from ..process import is_dead
from ..tracking.uris import home, redact
from .spec import SweepSpec

# Heartbeats and the retry callback are marked experimental; they are the documented way to recover
# trials of dead workers, so their warnings are noise here. Trials are summarized by our own lines.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.ERROR)

HEARTBEAT_S = 20  # RDB: a trial without a heartbeat for GRACE_S is stale
GRACE_S = 60
# Seconds between heartbeats (the grace period is 3x) for every worker of a study: a cluster whose
# workers cannot afford a minute's wait for a vanished worker's trial lowers it (the tests do).
HEARTBEAT_ENV = "TTCLAB_SWEEP_HEARTBEAT_S"
MAX_RETRY = 3  # a trial killed more often than this counts as an ordinary failure


def journal_path(name: str) -> Path:
    return home() / "runs" / "sweeps" / f"{name}.journal.log"


def is_rdb(uri: str | None) -> bool:
    return uri is not None and "://" in uri


def storage_label(spec: SweepSpec, uri: str | None) -> str:
    return redact(uri) if is_rdb(uri) else str(Path(uri) if uri else journal_path(spec.name))


def _storage_error(uri: str, problem: str, fix: str) -> ConfigError:
    return ConfigError(f"--storage {redact(uri)}: {problem}; {fix}")


def _check_folder(uri: str, path: Path) -> None:
    """The storage file's folder must exist (a typo must not create a new study elsewhere) and the
    path must not be a folder itself."""
    if path.is_dir():
        raise _storage_error(uri, "is a directory", "name a file in it, e.g. --storage <dir>/study.journal.log")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise _storage_error(uri, f"{parent} is a file, not a directory", "put the storage file in a directory")
            if parent != path.parent:
                raise _storage_error(uri, f"directory {path.parent} does not exist", "create it or fix the path")
            return


def _rdb(uri: str, handler: "StaleTrialHandler") -> RDBStorage:
    try:
        url = sqlalchemy.engine.make_url(uri)
    except (sqlalchemy.exc.ArgumentError, ValueError) as err:
        raise _storage_error(uri, f"not a valid database URL ({err})",
                             "use e.g. postgresql+psycopg2://user:password@host:5432/db") from None
    if url.get_backend_name() == "sqlite" and url.database:
        _check_folder(uri, Path(url.database))
    beat, grace = HEARTBEAT_S, GRACE_S
    if os.environ.get(HEARTBEAT_ENV):
        text = os.environ[HEARTBEAT_ENV]
        if not text.isdigit() or int(text) < 1:
            raise ConfigError(f"{HEARTBEAT_ENV}={text}: must be a whole number of seconds >= 1; fix or unset it")
        beat, grace = int(text), 3 * int(text)
    try:
        try:
            return RDBStorage(uri, heartbeat_interval=beat, grace_period=grace,
                              heartbeat_stale_trial_callback=handler)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            # Hosts starting together on an empty database race in creating Optuna's tables (the
            # loser's CREATE TABLE finds the winner's); a second try finds them all.
            time.sleep(1)
            return RDBStorage(uri, heartbeat_interval=beat, grace_period=grace,
                              heartbeat_stale_trial_callback=handler)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as err:
        first = redact(str(getattr(err, "orig", None) or err).strip().splitlines()[0])
        raise _storage_error(uri, f"cannot open it ({type(err).__name__}: {first})",
                             "check the URL, that the server is running and reachable, and that its driver is "
                             "installed") from None


class StaleTrialHandler:
    """Fails nothing itself: called with a trial already failed as stale, it closes the trial's
    open MLflow runs and enqueues its parameters again (also the RDB heartbeat callback)."""

    def __init__(self, tracker, sweep: str):
        self.tracker, self.sweep = tracker, sweep
        with warnings.catch_warnings():  # experimental since v2.8, yet the documented retry path
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        tags = {"ttclab.sweep": self.sweep, "ttclab.trial": str(trial.number)}
        for run in self.tracker.runs(tags, status="RUNNING"):
            self.tracker.close(run.info.run_id, "FAILED")
        self.retry(study, trial)


def open_storage(spec: SweepSpec, uri: str | None, handler: StaleTrialHandler):
    if is_rdb(uri):
        return _rdb(uri, handler)
    if uri:
        _check_folder(uri, Path(uri))
    path = Path(uri) if uri else journal_path(spec.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The open(O_EXCL) lock works on local disks and NFSv3+; a lock left by a killed writer is
    # broken after its grace period, so a kill -9 never wedges the study.
    _check_journal(path)
    return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))


def _check_journal(path: Path) -> None:
    """An existing file must start with a journal record ({"op_code": ...}): Optuna would append
    to any file, and it reports a bad line only once another line follows it."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb") as f:
        first = f.readline()
    try:
        record = json.loads(first)
    except ValueError:
        record = None
    if not isinstance(record, dict) or "op_code" not in record:
        raise _storage_error(str(path), "is not an Optuna journal file (its first line is no journal record)",
                             "name a new file or one written by `ttclab sweep`")


def make_sampler(spec: SweepSpec, salt: int = 0) -> optuna.samplers.BaseSampler:
    """`salt` (from the worker index and the trials so far) varies the seed, so parallel workers
    and resumed runs draw new points instead of replaying the same random sequence."""
    seed = spec.sampler.seed + salt
    kind = spec.sampler.type
    if kind == "tpe":
        # constant_liar: running trials count as bad guesses, so parallel workers spread out.
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "grid":
        # The seed shuffles the grid, and trial k takes grid point k: every worker and every resumed
        # run must shuffle alike, or two of them take the same point and another is never run.
        return optuna.samplers.GridSampler({k: p.grid() for k, p in spec.space.items()}, seed=spec.sampler.seed)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    try:
        return optuna.samplers.CmaEsSampler(seed=seed)
    except ImportError:
        raise ConfigError(f"{spec.source}: sampler.type: cmaes needs the `cmaes` package (pip install cmaes)") from None


def make_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    p = spec.pruner
    if p.type == "none" or spec.multi:  # Optuna prunes single-objective studies only
        return optuna.pruners.NopPruner()
    if p.type == "wilcoxon":
        return optuna.pruners.WilcoxonPruner(n_startup_steps=p.n_warmup_steps)
    return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)


def open_study(spec: SweepSpec, storage, *, fresh: bool = False, worker: int = 0,
               fingerprint: str | None = None) -> optuna.Study:
    """Create or resume the spec's study. `fingerprint` (the stage key of the spec's base config) is
    stored with a new study; resuming one made from another project config is refused, since its
    trials would silently mix two experiments (e.g. after editing the project's model size)."""
    name = spec.name
    if fresh and name in {s.study_name for s in optuna.study.get_all_study_summaries(storage)}:
        optuna.delete_study(study_name=name, storage=storage)
    directions = [o.direction for o in spec.objective]
    study = optuna.create_study(study_name=name, storage=storage, directions=directions,
                                pruner=make_pruner(spec), load_if_exists=True)
    stored = [d.name.lower() for d in study.directions]
    if stored != directions:
        raise ConfigError(f"{spec.source}: objective: the stored study {name!r} optimizes {stored}; "
                          "run with --fresh to start over")
    if fingerprint is not None:
        stored_fp = study.user_attrs.get("ttclab.fingerprint")
        if stored_fp is None:
            study.set_user_attr("ttclab.fingerprint", fingerprint)
        elif stored_fp != fingerprint:
            raise ConfigError(f"{spec.source}: the stored study {name!r} was run with another project config "
                              f"({spec.project} or the spec's fixed keys changed since); run with --fresh to start "
                              "over, or give the spec another name")
    study.sampler = make_sampler(spec, worker + 1000 * len(study.get_trials(deepcopy=False)))
    return study


def retried(study: optuna.Study) -> set[int]:
    return {n for t in study.get_trials(deepcopy=False) for n in t.system_attrs.get("retry_history", [])}


def used(study: optuna.Study) -> int:
    """Trials spent from the budget: all but those failed as stale and re-enqueued, and the
    enqueued (WAITING) ones not started yet."""
    skip = retried(study)
    return sum(1 for t in study.get_trials(deepcopy=False) if t.number not in skip and t.state != TrialState.WAITING)


def recover_stale(study: optuna.Study, storage, handler: StaleTrialHandler) -> list[int]:
    """Fail RUNNING trials whose worker has died: by heartbeat (RDB storage, any machine; the
    handler is the storage's stale-trial callback) and by PID (this host, any storage). Returns
    the numbers failed by PID. Goes through the storage, not `study.tell`, which would also run
    the sampler's end-of-trial hook."""
    optuna.storages.fail_stale_trials(study)
    study_id = storage.get_study_id_from_name(study.study_name)
    stale = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_dead(trial.user_attrs):
            continue  # alive, or another machine's worker (the RDB heartbeat covers those)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process recovered it first
        handler(study, storage.get_trial(trial_id))
        stale.append(trial.number)
    return stale


class BudgetLock:
    """Serializes "count the budget, then create a trial" (and a sweep's start: finding or creating
    its parent run and shared upstream runs) among the study's workers, so n_trials is met exactly.
    On PostgreSQL storage it is a session advisory lock, held across machines and dropped by the
    server when its holder's connection dies (kill -9 included); otherwise an flock on this
    machine's file (workers on other machines may then overshoot by one trial each). Released by
    the worker as soon as its new trial exists in the storage; releasing twice is harmless."""

    def __init__(self, spec: SweepSpec, uri: str | None):
        self.name = f"ttclab-sweep-{spec.name}"
        self._engine = None
        if is_rdb(uri) and sqlalchemy.engine.make_url(uri).get_backend_name() == "postgresql":
            self._engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool)
        else:
            self.path = Path(f"{uri}.budget-lock") if uri and not is_rdb(uri) else journal_path(spec.name).with_suffix(".lock")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._held = None

    def acquire(self) -> None:
        if self._engine is not None:
            self._held = self._engine.connect()
            self._held.execute(sqlalchemy.text("SELECT pg_advisory_lock(hashtext(:name))"), {"name": self.name})
            return
        self._held = open(self.path, "a")
        fcntl.flock(self._held, fcntl.LOCK_EX)

    def release(self) -> None:
        if self._held is not None:
            self._held.close()  # ends the session (NullPool), which drops its advisory lock; or the flock
            self._held = None
