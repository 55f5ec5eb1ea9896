"""Sweeps on the `train` stage of a tiny project: spec validation, parallel workers, nested runs,
resume, recovery of a killed worker's trial, and pruning."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from conftest import DEFAULT_PROJECT

from ttclab.cli import main
from ttclab.config import ConfigError, parse_override, set_dotted
from ttclab.sweep import load_spec, run_sweep
from ttclab.sweep.study import StaleTrialHandler, open_storage, open_study
from ttclab.tracking.store import Tracker


def write_spec(folder: Path, project: Path, **changes) -> Path:
    spec = {"name": "tiny-lr", "project": str(project), "stage": "train",
            "objective": {"metric": "val/best_loss", "direction": "minimize", "prune_on": "val/loss"},
            "n_trials": 4, "sampler": {"type": "random", "seed": 0}, "pruner": {"type": "none"},
            "space": {"train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}}}
    spec.update(changes)
    path = folder / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def child_runs(tracker: Tracker, parent_id: str) -> list:
    return tracker.runs({"mlflow.parentRunId": parent_id})


def parent_of(tracker: Tracker, name: str):
    (parent,) = tracker.runs({"ttclab.sweep": name, "ttclab.stage": "sweep"})
    return parent


def study_of(spec_path: Path, tracker: Tracker):
    spec = load_spec(spec_path)
    handler = StaleTrialHandler(tracker, spec.name)
    storage = open_storage(spec, None, handler)
    return open_study(spec, storage)


@pytest.mark.parametrize("changes, key, fragment", [
    ({"space": {"train.lrr": {"type": "float", "low": 0.1, "high": 1.0}}}, "space.train.lrr", "valid keys of train"),
    ({"fixed": {"modl.width": 4}}, "fixed.modl.width", "unknown key modl"),
    ({"fixed": {"model.width": "wide"}}, "fixed.model.width", "must be an integer"),
    ({"stage": "train", "n_trials": 2, "name": "x", "objective": {"metric": "val/loss"}, "space": {}}, "space",
     "missing"),
    ({"space": {"train.lr": {"type": "float", "low": 1.0, "high": 0.1}}}, "space.train.lr", "need low < high"),
    ({"space": {"train.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}}, "space.train.lr", "low > 0"),
    ({"space": {"train.epochs": {"type": "float", "low": 1, "high": 3}}}, "space.train.epochs", "use type: int"),
    ({"space": {"train.lr": {"type": "float", "low": -1.0, "high": 0.1}}}, "space.train.lr", "lr > 0"),
    ({"objective": None}, "objective", "missing"),
    ({"objective": {"metric": "val/loss", "direction": "up"}}, "objective", "minimize or maximize"),
    ({"n_trials": "many"}, "n_trials", "must be an integer"),
    ({"stage": "trian"}, "stage", "unknown stage 'trian'; valid:"),
    ({"objective": {"metric": "val/loss", "split": "val"}}, "objective.split", "no split key"),
])
def test_spec_errors_name_file_and_key(tmp_path, project, changes, key, fragment):
    path = write_spec(tmp_path, project, **changes)
    with pytest.raises(ConfigError) as err:
        load_spec(path)
    msg = str(err.value)
    assert str(path) in msg and key in msg and fragment in msg, msg
    assert "\n" not in msg


def test_missing_project_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"tiny-lr.yaml: project: no such file .*nowhere.yaml"):
        load_spec(write_spec(tmp_path, Path("nowhere.yaml")))


def test_cli_reports_a_bad_spec_in_one_line(tmp_path, project, isolated_tracking):
    path = write_spec(tmp_path, project, space={"train.nope": {"type": "int", "low": 1, "high": 2}})
    result = CliRunner().invoke(main, ["sweep", str(path)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "train.nope" in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_two_workers_then_resume(tmp_path, project, isolated_tracking):
    spec = write_spec(tmp_path, project)
    tracker = Tracker(isolated_tracking)
    summary = run_sweep(spec, workers=2, n_trials=4, quiet=True)
    parent = parent_of(tracker, "tiny-lr")
    runs = child_runs(tracker, parent.info.run_id)
    assert sorted(int(r.data.tags["ttclab.trial"]) for r in runs) == [0, 1, 2, 3]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert all(r.data.tags["ttclab.sweep"] == "tiny-lr" and "train.lr" in r.data.params for r in runs)
    assert summary["trials"]["complete"] == 4 and summary["best"]["run_id"] in {r.info.run_id for r in runs}
    best = parent.data.metrics["best/val/best_loss"]
    assert best == min(r.data.metrics["val/best_loss"] for r in runs)
    artifacts = {f.path for f in tracker.client.list_artifacts(parent.info.run_id)}
    figures = {f.path for f in tracker.client.list_artifacts(parent.info.run_id, "figures")}
    assert {"best_trial.json", "sweep.yaml"} <= artifacts
    assert {"figures/optuna_history.html", "figures/optuna_importances.html", "figures/optuna_slice.html"} <= figures
    first = {t.number: (t.params, t.datetime_complete) for t in study_of(spec, tracker).trials}

    run_sweep(spec, workers=1, n_trials=6, quiet=True)  # resume: two more, same parent, nothing re-run
    assert parent_of(tracker, "tiny-lr").info.run_id == parent.info.run_id
    trials = study_of(spec, tracker).trials
    assert [t.number for t in trials] == list(range(6)) and all(t.state.name == "COMPLETE" for t in trials)
    assert {t.number: (t.params, t.datetime_complete) for t in trials[:4]} == first
    assert len({t.params["train.lr"] for t in trials}) == 6
    assert len(child_runs(tracker, parent.info.run_id)) == 6
    run_sweep(spec, workers=1, n_trials=6, quiet=True)  # complete already: no new trial
    assert len(study_of(spec, tracker).trials) == 6


def test_dead_workers_trial_is_failed_and_retried(tmp_path, project, isolated_tracking):
    spec = write_spec(tmp_path, project, name="tiny-dead")
    tracker = Tracker(isolated_tracking)
    study = study_of(spec, tracker)
    trial = study.ask()
    lr = trial.suggest_float("train.lr", 1.0e-4, 1.0e-2, log=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    for key, value in {"ttclab.host": socket.gethostname(), "ttclab.pid": dead.pid, "ttclab.pid_start": "1"}.items():
        trial.set_user_attr(key, value)
    # The killed worker's MLflow run, left RUNNING.
    orphan = tracker.start("euler1d", "train", params={}, tags={"ttclab.sweep": "tiny-dead", "ttclab.trial": "0"})
    orphan_id = orphan.__enter__().id

    run_sweep(spec, n_trials=1, quiet=True)
    trials = study_of(spec, tracker).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[1].params["train.lr"] == lr and trials[1].system_attrs["failed_trial"] == 0
    assert tracker.run_info(orphan_id).info.status == "FAILED"


def test_pruned_trial_is_killed_run(tmp_path, project, isolated_tracking):
    spec = write_spec(tmp_path, project, name="tiny-prune", fixed={"train.epochs": 3},
                      pruner={"type": "median", "n_startup_trials": 1},
                      space={"train.lr": {"type": "categorical", "choices": [3.0e-3, 1.0e-7]}})
    tracker = Tracker(isolated_tracking)
    study = study_of(spec, tracker)
    study.enqueue_trial({"train.lr": 3.0e-3})  # learns: sets the median
    study.enqueue_trial({"train.lr": 1.0e-7})  # does not learn: above the median after one epoch
    summary = run_sweep(spec, n_trials=2, quiet=True)
    trials = study_of(spec, tracker).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED"]
    assert summary["trials"] == {"complete": 1, "pruned": 1, "fail": 0}
    runs = {r.data.tags["ttclab.trial"]: r for r in child_runs(tracker, parent_of(tracker, "tiny-prune").info.run_id)}
    assert runs["0"].info.status == "FINISHED" and runs["1"].info.status == "KILLED"
    assert "epoch" in runs["1"].data.metrics and runs["1"].data.metrics["epoch"] < 3
    best = json.loads((Path(tracker.artifact_dir(parent_of(tracker, "tiny-prune").info.run_id)) / "best_trial.json").read_text())
    assert best["best"]["number"] == 0


def test_rdb_storage_heartbeat_retries_a_silent_trial(tmp_path, project, isolated_tracking, monkeypatch):
    """An RDB study (SQLite through SQLAlchemy here; PostgreSQL takes the same code path): a trial
    whose worker on another machine stopped sending heartbeats is failed and retried."""
    from ttclab.sweep import study as study_module

    monkeypatch.setattr(study_module, "HEARTBEAT_S", 1)
    monkeypatch.setattr(study_module, "GRACE_S", 1)
    spec_path = write_spec(tmp_path, project, name="tiny-rdb")
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    tracker = Tracker(isolated_tracking)
    spec = load_spec(spec_path)
    storage = open_storage(spec, url, StaleTrialHandler(tracker, spec.name))
    study = open_study(spec, storage)
    trial = study.ask()
    lr = trial.suggest_float("train.lr", 1.0e-4, 1.0e-2, log=True)
    trial.set_user_attr("ttclab.host", "elsewhere")  # not ours: only the heartbeat can tell
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(spec.name), 0)
    storage.record_heartbeat(trial_id)
    time.sleep(2.5)

    run_sweep(spec_path, n_trials=1, storage=url, quiet=True)
    trials = open_study(spec, storage).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[1].params["train.lr"] == lr and trials[1].system_attrs["failed_trial"] == 0


def test_grid_sampler_visits_each_point_once_across_workers(tmp_path, monkeypatch):
    """Workers get different seeds for random draws, but a grid must be shuffled alike in all."""
    monkeypatch.setenv("TTCLAB_HOME", str(tmp_path))
    spec = load_spec(write_spec(tmp_path, DEFAULT_PROJECT, sampler={"type": "grid", "seed": 3},
                                space={"ttc.branching": {"type": "int", "low": 1, "high": 9, "step": 2}}))
    storage = open_storage(spec, None, StaleTrialHandler(None, spec.name))
    workers = [open_study(spec, storage, worker=i) for i in (0, 1)]
    seen = []
    for i in range(5):
        trial = workers[i % 2].ask()
        seen.append(trial.suggest_int("ttc.branching", 1, 9, step=2))
    assert sorted(seen) == [1, 3, 5, 7, 9]


def test_resuming_a_study_made_from_another_project_config_is_refused(tmp_path, monkeypatch):
    """A study resumed after the project changed (say model.dim) would mix two experiments' trials."""
    monkeypatch.setenv("TTCLAB_HOME", str(tmp_path))
    spec = load_spec(write_spec(tmp_path, DEFAULT_PROJECT))
    storage = open_storage(spec, None, StaleTrialHandler(None, spec.name))
    study = open_study(spec, storage, fingerprint="aaa")
    study.ask()
    assert len(open_study(spec, storage, fingerprint="aaa").trials) == 1  # same config: resumed
    with pytest.raises(ConfigError, match="another project config.*--fresh"):
        open_study(spec, storage, fingerprint="bbb")
    assert open_study(spec, storage, fresh=True, fingerprint="bbb").trials == []


def test_trc_sweep_solves_the_teacher_once_before_any_trial(tmp_path, isolated_tracking):
    """The declared trc -> trc_data input is precomputed by the runner (the old hand-written table
    lacked it, so each parallel worker could solve the teacher itself inside its first trial)."""
    from test_trc_stage import TINY

    raw: dict = {"base": str(DEFAULT_PROJECT.parent / "double_integrator.yaml")}
    for text in TINY:
        set_dotted(raw, *parse_override(text))
    project = tmp_path / "tiny_trc.yaml"
    project.write_text(yaml.safe_dump(raw))
    spec = write_spec(tmp_path, project, name="tiny-trc", stage="trc", n_trials=1,
                      objective={"metric": "trc/success_rate", "direction": "maximize", "split": "val"},
                      space={"trc.process_weight": {"type": "float", "low": 0.1, "high": 1.0}})
    run_sweep(spec, n_trials=1, quiet=True)
    tracker = Tracker(isolated_tracking)
    (data,) = tracker.runs({"ttclab.stage": "trc_data"})
    children = child_runs(tracker, parent_of(tracker, "tiny-trc").info.run_id)  # the trial, the test re-run
    assert children and data.info.status == "FINISHED"
    assert data.info.end_time <= min(r.info.start_time for r in children)
