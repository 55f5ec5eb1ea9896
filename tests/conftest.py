"""Shared fixtures: tiny project configs built from the real default project, tiny generated data
files (one per problem per session), and an isolated MLflow tracking store per test.

Fixtures meant for every test module:
    tiny_project(problem="euler1d", *overrides) -> ProjectConfig   small grid/model/epochs
    tiny_data_file(problem="euler1d") -> Path                      PDEBench-layout file, session-cached
    isolated_tracking -> str                                      tracking URI in tmp_path, env isolated
    tracking_store_in(monkeypatch, folder) -> str                 the same for module/session fixtures
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

# Test tensors are tiny: OpenMP fan-out gains nothing on them, and on a busy 2-core machine every
# parallel op can wait a whole scheduler slice for its second thread (measured: sqrt of 3072
# doubles 0.015 ms on one thread, ~16 ms on two), which made a 16x16 Euler solve take 4 s.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PROJECT = REPO / "projects" / "euler1d.yaml"

# Dotted overrides that shrink the default project to seconds of CPU time.
TINY_OVERRIDES = {
    "data.n_trajectories": 12,
    "model.width": 8,
    "model.modes": 4,
    "model.layers": 2,
    "train.epochs": 2,
    "train.batch_size": 16,
    "train.log_every": 1,
}
# Grid sizes per problem; 2D stays smaller so a whole euler2d data set solves in well under a second.
TINY_GRIDS = {
    "euler1d": {"n_cells": 32, "n_snapshots": 9},
    "burgers1d": {"n_cells": 32, "n_snapshots": 9},
    "euler2d": {"n_cells": 16, "n_snapshots": 5},
}


def build_tiny_project(problem: str = "euler1d", *overrides: str):
    """The default project YAML with TINY_OVERRIDES; another problem replaces the problem section
    (its solver settings differ, so euler1d's keys would be unknown there)."""
    from ttclab.config import parse_override, read_yaml, set_dotted
    from ttclab.project import build_project

    raw = read_yaml(DEFAULT_PROJECT)
    if problem == "euler1d":
        raw["problem"].update(TINY_GRIDS[problem])
    else:
        raw["problem"] = {"type": problem, **TINY_GRIDS[problem]}
        raw["name"] = problem
    for key, value in TINY_OVERRIDES.items():
        set_dotted(raw, key, value)
    for text in overrides:
        set_dotted(raw, *parse_override(text))
    return build_project(raw, f"{DEFAULT_PROJECT} (tiny test overrides)")


@pytest.fixture(scope="session")
def tiny_project():
    """Factory: tiny_project("burgers1d", "train.epochs=3") -> ProjectConfig."""
    return build_tiny_project


def write_tiny_data(path: Path, cfg) -> Path:
    """Solve cfg's problem and write it the way the generate stage does (splits + train-only stats)."""
    from ttclab.data import pdebench
    from ttclab.data.datasets import channel_stats, make_splits
    from ttclab.problems import make_problem

    problem = make_problem(cfg.problem)
    traj = problem.solve(cfg.data.n_trajectories, cfg.data.seed, progress=False)
    splits = make_splits(cfg.data.n_trajectories, cfg.data)
    mean, std = channel_stats(traj.fields[splits["train"]])
    meta = {f"split_{k}": v for k, v in splits.items()} | {"norm_mean": mean, "norm_std": std}
    return pdebench.write(path, problem, traj, meta)


@pytest.fixture(scope="session")
def tiny_data_file(tmp_path_factory):
    """Factory: tiny_data_file("euler1d") -> path of a tiny data file, generated once per session.
    Treat it as read-only; copy it before changing it."""
    made: dict[str, Path] = {}

    def get(problem: str = "euler1d") -> Path:
        if problem not in made:
            folder = tmp_path_factory.mktemp(f"data-{problem}")
            made[problem] = write_tiny_data(folder / f"{problem}.h5", build_tiny_project(problem))
        return made[problem]

    return get


@pytest.fixture(scope="session")
def _empty_tracking_db(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its schema already migrated: creating one costs ~5 s, copying it
    costs nothing, so each test gets its own store cheaply."""
    from ttclab.tracking.store import Tracker

    path = tmp_path_factory.mktemp("tracking-template") / "mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_RUN_ID", raising=False)  # Tracker would otherwise consume it
        mp.chdir(path.parent)  # MLflow roots the Default experiment's artifacts at ./mlruns
        Tracker(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def tracking_store_in(_empty_tracking_db):
    """Factory for fixtures wider than one test: tracking_store_in(mp, folder) points TTCLAB_HOME and
    MLFLOW_TRACKING_URI into `folder` (via the MonkeyPatch `mp`), forgets any `mlflow run` run id,
    and returns the URI of the fresh store there."""

    def isolate(mp: pytest.MonkeyPatch, folder: Path) -> str:
        shutil.copy(_empty_tracking_db, folder / "mlflow.db")
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        mp.setenv("TTCLAB_HOME", str(folder))
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        return uri

    return isolate


@pytest.fixture
def isolated_tracking(monkeypatch, tmp_path, tracking_store_in) -> str:
    """A fresh tracking store in tmp_path (artifacts too) for one test; returns its URI."""
    return tracking_store_in(monkeypatch, tmp_path)


@pytest.fixture
def project(tmp_path, tiny_data_file) -> Path:
    """The default project shrunk to seconds, as a YAML file on a pre-generated tiny data file (for
    tests that run stages in subprocesses or sweeps, which read a project path)."""
    import yaml

    from ttclab.config import set_dotted

    raw: dict = {"base": str(DEFAULT_PROJECT), "problem": {"type": "euler1d", **TINY_GRIDS["euler1d"]}}
    for key, value in {**TINY_OVERRIDES, "data.path": str(tiny_data_file())}.items():
        set_dotted(raw, key, value)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path
