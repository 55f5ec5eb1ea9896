"""Many machines on loopback: an `mlflow server` on PostgreSQL with served artifacts
(`mlflow-artifacts:/` URIs), and "hosts" that share nothing but its URL (and, for sweeps, the Optuna
storage URL): each is a `python -m ttclab ...` process with its own working directory and
TTCLAB_HOME. Sweep hosts also get their own host name (a UTS namespace, when `unshare` can make
one), so a killed host's trial can only be recovered through the Optuna heartbeat, as on a cluster.

The URLs carry a password (the throwaway cluster trusts loopback, so any password works): no
command may print it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import DEFAULT_PROJECT, TINY_GRIDS, TINY_OVERRIDES
from pgcluster import cluster, free_port, stop_group, wait_http

from ttclab.tracking.store import Tracker

SECRET = "s3cret-pw"
TINY_SETS = [f"{k}={v}" for k, v in {**{f"problem.{k}": v for k, v in TINY_GRIDS["euler1d"].items()},
                                     **TINY_OVERRIDES, "ttc.branching": 3, "ttc.n_ics": 2}.items()]


pytestmark = pytest.mark.slow  # a PostgreSQL cluster and an MLflow server per module: the slow tier


@pytest.fixture(scope="module")
def server():
    """(tracking URI, Optuna storage URL, artifacts folder) of a PostgreSQL-backed MLflow server."""
    with cluster(("mlflow", "optuna")) as url:
        base = url.replace("ttclab@", f"ttclab:{SECRET}@")
        artifacts = Path(tempfile.mkdtemp(prefix="ttclab-artifacts-"))
        port = free_port()
        log = open(artifacts.parent / f"{artifacts.name}.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"{base}/mlflow",
                                 "--artifacts-destination", str(artifacts), "--host", "127.0.0.1",
                                 "--port", str(port), "--workers", "1"],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            try:
                wait_http(f"http://127.0.0.1:{port}/health", proc)
            except RuntimeError as err:
                raise RuntimeError(f"{err}; its log ends: {Path(log.name).read_text()[-2000:]}") from None
            yield f"http://127.0.0.1:{port}", f"{base}/optuna", artifacts
        finally:
            stop_group(proc, timeout_s=1)  # it holds nothing: the data is in PostgreSQL
            log.close()
            Path(log.name).unlink()
            shutil.rmtree(artifacts, ignore_errors=True)


def host_env(uri: str, home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TTCLAB_"))}
    return {**env, "MLFLOW_TRACKING_URI": uri, "TTCLAB_HOME": str(home), "TTCLAB_THREADS": "1",
            "TTCLAB_SWEEP_HEARTBEAT_S": "1"}


def ttclab(args: list[str], uri: str, workdir: Path) -> str:
    """Run `python -m ttclab ARGS` as a host working in `workdir` (also its TTCLAB_HOME)."""
    workdir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "ttclab", *args], cwd=workdir, env=host_env(uri, workdir),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def runs_of(tracker: Tracker, stage: str) -> list:
    return tracker.runs({"ttclab.stage": stage, "ttclab.project": "euler1d"})


def test_second_host_reads_the_first_hosts_runs_through_the_server(server, tmp_path, monkeypatch):
    uri, _, artifacts = server
    host_a, host_b = tmp_path / "a", tmp_path / "b"
    sets = [arg for s in TINY_SETS for arg in ("--set", s)]
    ttclab(["ttc", str(DEFAULT_PROJECT), *sets, "--quiet"], uri, host_a)  # runs generate and train first
    ttclab(["ttc", str(DEFAULT_PROJECT), *sets, "--set", "ttc.reward=random", "--quiet"], uri, host_b)

    monkeypatch.setenv("TTCLAB_HOME", str(tmp_path / "reader"))
    tracker = Tracker(uri)
    (gen,), (train,) = runs_of(tracker, "generate"), runs_of(tracker, "train")  # reused, not rerun by host b
    ttc = runs_of(tracker, "ttc")
    assert sorted(r.data.tags["ttclab.selector"] for r in ttc) == ["arm", "random"]
    assert {r.info.status for r in [gen, train, *ttc]} == {"FINISHED"}
    for run in (gen, train, *ttc):
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
    # The artifacts live on the server; host b downloaded the data file and the operator from there.
    stored = {p.relative_to(artifacts).as_posix() for p in artifacts.rglob("*") if p.is_file()}
    assert any(p.endswith(f"{train.info.run_id}/artifacts/model/operator.pt") for p in stored), sorted(stored)[:20]
    cache = host_b / "runs" / "artifact-cache"
    assert (cache / gen.info.run_id / "data" / "euler1d.h5").is_file()
    assert (cache / train.info.run_id / "model" / "operator.pt").is_file()
    for host in (host_a, host_b):  # nothing written beside the runs but the artifact cache
        assert all("artifact-cache" in p.parts for p in host.rglob("*.pt"))
        assert not (host / "mlruns").exists() and not (host / "mlartifacts").exists()


def _own_hostname_works() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "--uts", "hostname", "ttclab-probe"], capture_output=True).returncode == 0


def start_host(name: str, args: list[str], uri: str, workdir: Path) -> subprocess.Popen:
    """`python -m ttclab ARGS` as host `name`: own folder and, where possible, own host name (the
    command execs, so the Popen pid is the ttclab process's)."""
    workdir.mkdir(parents=True)
    cmd = [sys.executable, "-m", "ttclab", *args]
    if _own_hostname_works():
        cmd = ["unshare", "--uts", "sh", "-c", f'hostname {name} && exec "$@"', "sh", *cmd]
    return subprocess.Popen(cmd, cwd=workdir, env=host_env(uri, workdir), stdout=open(workdir / "out.log", "w"),
                            stderr=subprocess.STDOUT)


def tiny_spec(folder: Path, name: str, n_trials: int) -> Path:
    """A train-stage sweep over train.lr on the tiny project, data generated by the sweep itself."""
    project: dict = {"base": str(DEFAULT_PROJECT), "problem": {"type": "euler1d", **TINY_GRIDS["euler1d"]}}
    for key, value in TINY_OVERRIDES.items():
        section, field = key.split(".")
        project.setdefault(section, {})[field] = value
    (folder / "tiny.yaml").write_text(yaml.safe_dump(project))
    spec = {"name": name, "project": str(folder / "tiny.yaml"), "stage": "train", "n_trials": n_trials,
            "objective": {"metric": "val/best_loss", "direction": "minimize"},
            "sampler": {"type": "random", "seed": 0}, "pruner": {"type": "none"},
            "space": {"train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


_STORAGES: dict = {}  # one engine per URL: polling must not open a connection pool per call


def trials_of(storage_url: str, name: str) -> list:
    """The study's trials; [] while the hosts are still creating its tables or the study."""
    import optuna
    import sqlalchemy

    try:
        if storage_url not in _STORAGES:
            _STORAGES[storage_url] = optuna.storages.RDBStorage(storage_url)
        return optuna.load_study(study_name=name, storage=_STORAGES[storage_url]).get_trials(deepcopy=False)
    except (KeyError, sqlalchemy.exc.SQLAlchemyError):
        return []


def test_two_sweep_hosts_share_one_study_and_recover_a_killed_host(server, tmp_path, monkeypatch):
    uri, storage, _ = server
    n = 4
    spec = tiny_spec(tmp_path, "hosts", n)
    args = ["sweep", str(spec), "--storage", storage, "--quiet"]
    monkeypatch.setenv("TTCLAB_HOME", str(tmp_path / "reader"))
    tracker = Tracker(uri)
    victim = start_host("host-b", args, uri, tmp_path / "b")
    survivor = start_host("host-a", args, uri, tmp_path / "a")
    killed = None
    try:
        deadline = time.monotonic() + 120
        while killed is None and time.monotonic() < deadline and victim.poll() is None:
            running = [t for t in trials_of(storage, "hosts") if t.state.name == "RUNNING"
                       and t.user_attrs.get("ttclab.pid") == str(victim.pid)]
            # Mid-trial: once the trial's MLflow run exists. No handler runs; the run stays RUNNING.
            if running and tracker.runs({"ttclab.sweep": "hosts", "ttclab.trial": str(running[0].number)}, "RUNNING"):
                os.kill(victim.pid, signal.SIGKILL)
                killed = running[0]
            time.sleep(0.1)
        assert killed is not None, "host b never ran a trial: " + (tmp_path / "b" / "out.log").read_text()[-2000:]
        survivor.wait(180)
    finally:
        for proc in (victim, survivor):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    out = (tmp_path / "a" / "out.log").read_text()
    assert survivor.returncode == 0, out[-3000:]
    assert SECRET not in out + (tmp_path / "b" / "out.log").read_text()

    trials = trials_of(storage, "hosts")
    states = {t.number: t.state.name for t in trials}
    assert states.pop(killed.number) == "FAIL"
    assert list(states.values()) == ["COMPLETE"] * n  # n_trials exactly, the retry not counted
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retry.params == killed.params
    lrs = [t.params["train.lr"] for t in trials if t.number != killed.number]
    assert len(set(lrs)) == n  # no trial ran twice
    if _own_hostname_works():  # host-a cannot judge host-b's PIDs: only the heartbeat failed its trial
        assert killed.user_attrs["ttclab.host"] == "host-b"
        assert {t.user_attrs["ttclab.host"] for t in trials} == {"host-a", "host-b"}

    (parent,) = tracker.runs({"ttclab.sweep": "hosts", "ttclab.stage": "sweep"})
    assert "ttclab:***@" in parent.data.tags["ttclab.sweep.storage"] and SECRET not in str(parent.data)
    children = tracker.runs({"mlflow.parentRunId": parent.info.run_id})
    by_trial = {}
    for run in children:
        by_trial.setdefault(int(run.data.tags["ttclab.trial"]), []).append(run.info.status)
    assert by_trial == {t.number: ["FAILED" if t.number == killed.number else "FINISHED"] for t in trials}
    assert len(runs_of(tracker, "generate")) == 1  # shared upstream made once (the other test's data has the same key)


def test_a_bad_heartbeat_setting_is_one_line(tmp_path, monkeypatch):
    from ttclab.config import ConfigError
    from ttclab.sweep import load_spec
    from ttclab.sweep.study import StaleTrialHandler, open_storage

    monkeypatch.setenv("TTCLAB_SWEEP_HEARTBEAT_S", "0.5")
    spec = load_spec(tiny_spec(tmp_path, "beat", 1))
    with pytest.raises(ConfigError, match=r"^TTCLAB_SWEEP_HEARTBEAT_S=0.5: must be a whole number of seconds >= 1"):
        open_storage(spec, "postgresql+psycopg2://ttclab:pw@127.0.0.1:1/optuna", StaleTrialHandler(None, "beat"))
