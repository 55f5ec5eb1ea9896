"""Packaging: conda.yaml mirrors pyproject.toml, torch stays on the local CPU wheel, MLproject wiring."""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from ttclab.cli import main

REPO = Path(__file__).resolve().parents[1]


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def runtime_requirements() -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in pyproject()["project"]["dependencies"]]
    return {r.name.lower(): r for r in reqs}


def conda_pip_requirements() -> dict[str, Requirement]:
    env = yaml.safe_load((REPO / "conda.yaml").read_text())
    pip_lists = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_lists) == 1, "conda.yaml needs exactly one pip: list"
    # `-e .` installs ttclab itself; every other line is a requirement.
    reqs = [Requirement(line) for line in pip_lists[0] if not line.startswith("-")]
    return {r.name.lower(): r for r in reqs}


def test_conda_env_lists_the_same_dependencies_as_pyproject():
    ours, conda = runtime_requirements(), conda_pip_requirements()
    assert set(conda) == set(ours)
    for name, req in ours.items():
        assert conda[name].specifier == req.specifier, name


def test_issue_runtime_dependencies_are_declared():
    names = set(runtime_requirements())
    assert {"torch", "mlflow", "optuna", "pyyaml", "h5py", "plotly", "click", "numpy"} <= names
    assert names & {"tqdm", "rich"}


def test_torch_is_capped_below_2_14_and_admits_the_installed_wheel():
    spec = runtime_requirements()["torch"].specifier
    uppers = [Version(s.version) for s in spec if s.operator in ("<", "<=")]
    assert uppers and max(uppers) <= Version("2.14")
    assert not spec.contains("2.14.0") and not spec.contains("3.0.0")
    installed = Version(version("torch")).base_version  # drop the +cpu local tag
    assert spec.contains(installed), installed


def test_mlflow_and_optuna_pins_admit_the_installed_versions():
    reqs = runtime_requirements()
    for name in ("mlflow", "optuna"):
        assert reqs[name].specifier.contains(version(name)), name
    assert not reqs["optuna"].specifier.contains("4.9") and not reqs["optuna"].specifier.contains("6.0")


def test_console_script_and_dev_extra():
    meta = pyproject()["project"]
    assert meta["scripts"]["ttclab"] == "ttclab.cli:main"
    assert any(Requirement(r).name == "pytest" for r in meta["optional-dependencies"]["dev"])


def test_mlproject_uses_conda_env_and_existing_cli_commands():
    spec = yaml.safe_load((REPO / "MLproject").read_text())
    assert spec["conda_env"] == "conda.yaml" and (REPO / spec["conda_env"]).is_file()
    assert {"generate", "train"} <= set(spec["entry_points"])
    for name, entry in spec["entry_points"].items():
        command = entry["command"].split()
        assert command[:3] == ["python", "-m", "ttclab"], name
        assert command[3] in main.commands, name
        for param in entry.get("parameters", {}):
            assert "{" + param + "}" in entry["command"], (name, param)
