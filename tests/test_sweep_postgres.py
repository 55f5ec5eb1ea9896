"""A sweep on PostgreSQL storage (the multi-machine set-up): a trial whose worker on another
machine stopped sending heartbeats is failed and retried, and the sweep completes on the RDB study.

Starts a throwaway PostgreSQL cluster on loopback in a temporary folder (as the `postgres` user when
run as root, since initdb refuses root). Skips when the server binaries or psycopg2 are missing;
.ci/run installs psycopg2-binary so it runs in CI.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from test_sweep import child_runs, parent_of, write_spec

from ttclab.sweep import load_spec, run_sweep
from ttclab.sweep.study import StaleTrialHandler, open_storage, open_study
from ttclab.tracking.store import Tracker

pytest.importorskip("psycopg2")


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    bindir = _bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    # Directly under the system temp dir: pytest's own folders are private to root, and the server
    # runs as `postgres`.
    folder = Path(tempfile.mkdtemp(prefix="ttclab-pg-"))
    data = folder / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off"
    for cmd in ([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "ttclab"],
                [str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(folder / "log"), "-w", "-t", "30", "start"]):
        done = subprocess.run([*as_user, *cmd], capture_output=True, text=True)
        if done.returncode != 0:
            shutil.rmtree(folder, ignore_errors=True)
            pytest.skip(f"could not start a throwaway PostgreSQL ({Path(cmd[0]).name}: {done.stderr.strip()[-200:]})")
    try:
        yield f"postgresql+psycopg2://ttclab@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def test_postgres_heartbeat_retry(tmp_path, project, isolated_tracking, postgres_url,
                                                  monkeypatch):
    from ttclab.sweep import study as study_module

    monkeypatch.setattr(study_module, "HEARTBEAT_S", 1)
    monkeypatch.setattr(study_module, "GRACE_S", 1)
    spec_path = write_spec(tmp_path, project, name="tiny-pg")
    tracker = Tracker(isolated_tracking)
    spec = load_spec(spec_path)
    storage = open_storage(spec, postgres_url, StaleTrialHandler(tracker, spec.name))
    study = open_study(spec, storage)
    trial = study.ask()  # a trial of a worker on another machine that went silent
    lr = trial.suggest_float("train.lr", 1.0e-4, 1.0e-2, log=True)
    trial.set_user_attr("ttclab.host", "elsewhere")
    storage.record_heartbeat(storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(spec.name), 0))
    time.sleep(2.5)

    run_sweep(spec_path, n_trials=2, storage=postgres_url, quiet=True)
    trials = open_study(spec, storage).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert trials[1].params["train.lr"] == lr and trials[1].system_attrs["failed_trial"] == 0
    runs = child_runs(tracker, parent_of(tracker, "tiny-pg").info.run_id)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
