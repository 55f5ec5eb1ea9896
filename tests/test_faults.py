"""Faults on real `python -m ttclab` processes: SIGINT / SIGTERM / kill -9 of `train` mid-training,
resuming from the run's own last.pt, closing the runs of dead processes, four processes on a fresh
store, and `ui`-style signal forwarding to a child process group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from test_sweep import write_spec

from ttclab.cli import main
from ttclab.process import start_time
from ttclab.tracking.store import Tracker

# Enough epochs that training (~10 ms per tiny epoch) outlasts the moment the test signals it.
LONG = "train.epochs=3000"


def env_for(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
    return env | {"TTCLAB_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
                  "TTCLAB_THREADS": "1"}


SPAWNED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def no_process_left_behind():
    """A failed test must not leave a 3000-epoch training (or a sweep's workers) running."""
    yield
    while SPAWNED:
        proc = SPAWNED.pop()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def ttclab(home: Path, *args: str, log: str = "out") -> subprocess.Popen:
    """`python -m ttclab ARGS` on the store in `home` as its own process group (cleaned up after the
    test), output to files (a full pipe would block it)."""
    out = open(home / f"{log}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "ttclab", *args], env=env_for(home), stdout=out,
                            stderr=subprocess.STDOUT, cwd=home, start_new_session=True)
    SPAWNED.append(proc)
    return proc


def output(home: Path, log: str = "out") -> str:
    return (home / f"{log}.log").read_text()


def wait_for_last_pt(tracker: Tracker, proc: subprocess.Popen, timeout: float = 180.0):
    """The RUNNING train run once its first per-epoch last.pt is in the run's artifacts."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "train ended before it could be interrupted"
        for run in tracker.runs({"ttclab.stage": "train"}, status="RUNNING"):
            if (tracker.artifact_dir(run.info.run_id) / "model" / "last.pt").is_file():
                return run
        time.sleep(0.1)
    pytest.fail("no last.pt appeared in the train run")


def resume_and_check(tracker: Tracker, project: Path, killed_id: str) -> str:
    """Resume from the killed run's last.pt for two more epochs (the CLI in this process: its imports
    are loaded already); the new run starts where the killed one stopped. Returns the output."""
    saved = torch.load(tracker.artifact_dir(killed_id) / "model" / "last.pt", weights_only=True)
    result = CliRunner().invoke(main, ["train", str(project), "--quiet", "--set", f"train.epochs={saved['epoch'] + 2}",
                                       "--input", f"resume=runs:/{killed_id}/model/last.pt"])
    assert result.exit_code == 0, result.output
    (resumed,) = [r for r in tracker.runs({"ttclab.stage": "train"}) if r.info.run_id != killed_id]
    assert resumed.info.status == "FINISHED"
    epochs = [m.value for m in tracker.client.get_metric_history(resumed.info.run_id, "epoch")]
    assert epochs == [saved["epoch"] + 1, saved["epoch"] + 2]
    first_step = min(m.step for m in tracker.client.get_metric_history(resumed.info.run_id, "train/loss"))
    assert first_step == saved["step"] + 1
    return result.output


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_train_ends_killed_and_resumes_from_its_last_pt(tmp_path, project, isolated_tracking, sig, code):
    tracker = Tracker(isolated_tracking)
    proc = ttclab(tmp_path, "train", str(project), "--quiet", "--set", LONG)
    run = wait_for_last_pt(tracker, proc)
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == code, output(tmp_path)
    assert "the run was marked KILLED" in output(tmp_path) and "Traceback" not in output(tmp_path)
    killed = tracker.run_info(run.info.run_id)
    assert killed.info.status == "KILLED" and killed.info.end_time
    assert "epoch" in killed.data.metrics  # buffered metrics were flushed on the way out
    resume_and_check(tracker, project, run.info.run_id)


def test_kill_9_of_train_is_closed_failed_by_the_next_stage_which_resumes_it(tmp_path, project, isolated_tracking):
    tracker = Tracker(isolated_tracking)
    proc = ttclab(tmp_path, "train", str(project), "--quiet", "--set", LONG)
    run = wait_for_last_pt(tracker, proc)
    proc.kill()
    proc.wait(timeout=30)
    assert tracker.run_info(run.info.run_id).info.status == "RUNNING"  # nobody could close it
    log = resume_and_check(tracker, project, run.info.run_id)
    dead = tracker.run_info(run.info.run_id)
    assert dead.info.status == "FAILED" and dead.data.tags["ttclab.closed"] == "its process died"
    (line,) = [ln for ln in log.splitlines() if run.info.run_id in ln]
    assert "as FAILED" in line and str(proc.pid) in line


@pytest.mark.slow
def test_four_processes_on_a_fresh_store_train_the_operator_once(tmp_path, project):
    """A fresh store (no database file yet) and four `ttc` processes started together: no crash in
    MLflow's schema creation, one `train` run shared by all four, four `ttc` runs."""
    tiny_ttc = ["--quiet", "--set", "ttc.branching=2", "--set", "ttc.n_ics=2", "--set", "ttc.horizons=[1]"]
    procs = [ttclab(tmp_path, "ttc", str(project), *tiny_ttc, log=f"ttc{i}") for i in range(4)]
    codes = [p.wait(timeout=400) for p in procs]
    assert codes == [0, 0, 0, 0], "\n".join(output(tmp_path, f"ttc{i}")[-2000:] for i in range(4))
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    stages = [r.data.tags["ttclab.stage"] for r in tracker.runs({"ttclab.project": "euler1d"})]
    assert sorted(stages) == ["train"] + ["ttc"] * 4
    assert {r.info.status for r in tracker.runs({"ttclab.project": "euler1d"})} == {"FINISHED"}
    import sqlite3

    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        tables = [t for (t,) in db.execute("select name from sqlite_master where type='table'")]
        assert db.execute("pragma integrity_check").fetchone() == ("ok",)
    assert not [t for t in tables if t.startswith("_alembic_tmp")]


@pytest.mark.slow
def test_sigterm_of_a_sweep_reaches_its_workers(tmp_path, project, isolated_tracking):
    """SIGTERM reaches only the sweep's own process: it must pass it on to its workers, whose trial
    runs end KILLED (queued for retry), instead of waiting for them to finish the study."""
    spec = write_spec(tmp_path, project, name="tiny-term", n_trials=2, fixed={"train.epochs": 3000})
    tracker = Tracker(isolated_tracking)
    proc = ttclab(tmp_path, "sweep", str(spec), "--workers", "2", "--quiet")
    wait_for_last_pt(tracker, proc)
    workers = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, output(tmp_path)
    assert [pid for pid in workers if start_time(int(pid)) is not None] == []  # none left (zombies aside)
    trials = tracker.runs({"ttclab.sweep": "tiny-term", "ttclab.stage": "train"})
    assert trials and {r.info.status for r in trials} == {"KILLED"}


@pytest.mark.slow
def test_kill_9_of_a_sweep_worker_loses_and_duplicates_no_trial(tmp_path, project, isolated_tracking):
    """A real kill -9 of one of two workers mid-trial: the sweep still finishes exactly n_trials
    (the dead worker's trial is failed, queued again and run by the survivor), and its run is closed."""
    spec = write_spec(tmp_path, project, name="tiny-kill", n_trials=3, fixed={"train.epochs": 150})
    tracker = Tracker(isolated_tracking)
    proc = ttclab(tmp_path, "sweep", str(spec), "--workers", "2", "--quiet")
    victim = wait_for_last_pt(tracker, proc)
    os.kill(int(victim.data.tags["ttclab.pid"]), signal.SIGKILL)
    assert proc.wait(timeout=300) == 0, output(tmp_path)
    trials = tracker.runs({"ttclab.sweep": "tiny-kill", "ttclab.stage": "train"})
    finished = [r for r in trials if r.info.status == "FINISHED"]
    assert len(finished) == 3 and len({r.data.tags["ttclab.trial"] for r in finished}) == 3, output(tmp_path)
    assert tracker.run_info(victim.info.run_id).info.status == "FAILED"
    assert not [r for r in trials if r.info.status == "RUNNING"]


CHILD = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a server's worker
print("ready", flush=True)
time.sleep(60)
"""


def test_forwarding_ends_the_whole_child_group(tmp_path):
    """`ttclab ui` runs mlflow through process.run_forwarding: SIGTERM to it must end mlflow and the
    server processes mlflow started, then exit 143."""
    script = f"import sys; from ttclab.process import run_forwarding; sys.exit(run_forwarding([sys.executable, '-c', {CHILD!r}]))"
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    (group,) = {os.getpgid(int(c)) for c in children}
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 143
    deadline = time.monotonic() + 10
    while group_members(group) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert group_members(group) == []


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group: /proc/<pid>/stat fields 3 (state), 5 (pgrp)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


def test_allocator_keeps_freed_memory_unless_opted_out(monkeypatch):
    """glibc accepts both thresholds (mallopt returns 1 for each); TTCLAB_MALLOC=system leaves the
    allocator alone. Elsewhere (no glibc) the call is a no-op that says so."""
    import ctypes.util
    import platform

    from ttclab.process import keep_freed_memory

    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc" and ctypes.util.find_library("c")
    assert keep_freed_memory() is bool(glibc)
    monkeypatch.setenv("TTCLAB_MALLOC", "system")
    assert keep_freed_memory() is False
