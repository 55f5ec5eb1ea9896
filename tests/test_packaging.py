"""Packaging: conda.yaml mirrors pyproject.toml, torch stays on the local CPU wheel, MLproject wiring,
and the declared Python floor (requires-python) is true of every source file."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # the floor: tomllib is 3.11+, tomli is its backport (dev extra)
    import tomli as tomllib

import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from ttclab.cli import main

REPO = Path(__file__).resolve().parents[1]
FLOOR = (3, 10)
SOURCES = sorted(p for d in ("ttclab", "tests", "benchmarks") for p in (REPO / d).rglob("*.py"))


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


# What Python 3.11+ added that `ast.parse(feature_version=(3, 10))` lets through: the parser checks
# only some new grammar by version (e.g. except*, not `a[1, *b]`), and none of the new library names.
NEWER_MODULES = {"tomllib", "wsgiref.types"}
NEWER_NAMES = {
    "typing": {"Self", "LiteralString", "Never", "assert_never", "assert_type", "reveal_type", "TypeVarTuple",
               "Unpack", "Required", "NotRequired", "dataclass_transform", "override", "ReadOnly", "TypeIs"},
    "enum": {"StrEnum", "ReprEnum", "EnumCheck", "verify", "global_enum"},
    "datetime": {"UTC"}, "contextlib": {"chdir"}, "hashlib": {"file_digest"}, "itertools": {"batched"},
    "asyncio": {"TaskGroup", "timeout", "Runner"}, "operator": {"call"},
}
NEWER_BUILTINS = {"ExceptionGroup", "BaseExceptionGroup"}


def _guards_newer(test: ast.expr) -> bool:
    """`if sys.version_info >= (3, 11)`-style guard: its body may use what the floor lacks."""
    return (isinstance(test, ast.Compare) and isinstance(test.ops[0], (ast.GtE, ast.Gt))
            and ast.unparse(test.left) == "sys.version_info" and isinstance(test.comparators[0], ast.Tuple)
            and ast.literal_eval(test.comparators[0]) > FLOOR)


class AboveFloor(ast.NodeVisitor):
    def __init__(self, src: str):
        self.src, self.found = src, []

    def flag(self, node, what):
        self.found.append((node.lineno, what))

    def visit_If(self, node):
        if not _guards_newer(node.test):
            return self.generic_visit(node)
        for child in node.orelse:
            self.visit(child)

    def visit_Import(self, node):
        for alias in node.names:
            if alias.name in NEWER_MODULES:
                self.flag(node, f"import {alias.name}")

    def visit_ImportFrom(self, node):
        if node.module in NEWER_MODULES:
            self.flag(node, f"from {node.module} import")
        for alias in node.names:
            if alias.name in NEWER_NAMES.get(node.module, ()):
                self.flag(node, f"from {node.module} import {alias.name}")

    def visit_Attribute(self, node):
        if isinstance(node.value, ast.Name) and node.attr in NEWER_NAMES.get(node.value.id, ()):
            self.flag(node, f"{node.value.id}.{node.attr}")
        self.generic_visit(node)

    def visit_Name(self, node):
        if node.id in NEWER_BUILTINS:
            self.flag(node, node.id)

    def visit_Subscript(self, node):
        # x[(a, *b)] is a 3.10 tuple display; only the bare x[a, *b] is new. The AST is the same, so
        # look at the source: a parenthesized tuple's segment is wrapped in ( ).
        elts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        segment = ast.get_source_segment(self.src, node.slice) or ""
        wrapped = isinstance(node.slice, ast.Tuple) and segment.startswith("(") and segment.endswith(")")
        if not wrapped and any(isinstance(e, ast.Starred) for e in elts):
            self.flag(node, "starred expression in a subscript (PEP 646)")
        self.generic_visit(node)

    def visit_arguments(self, node):
        if node.vararg is not None and isinstance(node.vararg.annotation, ast.Starred):
            self.flag(node.vararg, "starred *args annotation (PEP 646)")
        self.generic_visit(node)

    def visit_TryStar(self, node):  # 3.11+ parsers only
        self.flag(node, "except*")
        self.generic_visit(node)


def above_floor(src: str, name: str = "<src>") -> list[tuple[int, str]]:
    """(line, what) for every use of syntax or library names newer than FLOOR."""
    try:
        tree = ast.parse(src, name, feature_version=FLOOR)
    except SyntaxError as err:
        return [(err.lineno or 0, f"syntax: {err.msg}")]
    visitor = AboveFloor(src)
    visitor.visit(tree)
    return visitor.found


def test_requires_python_declares_the_floor_the_checks_use():
    assert pyproject()["project"]["requires-python"] == ">=" + ".".join(map(str, FLOOR))
    assert "Python 3.10+" in (REPO / "README.md").read_text()


@pytest.mark.parametrize("src", [
    "ds[a, ::s, *space]", "x[*idx]", "def f(*a: *Ts): pass", "try:\n    pass\nexcept* OSError:\n    pass",
    "import tomllib", "from typing import Self", "import typing\nT = typing.Self", "raise ExceptionGroup('x', [])",
    "from datetime import UTC", "import enum\nclass E(enum.StrEnum): pass",
])
def test_the_floor_check_rejects_what_3_11_added(src):
    assert above_floor(src)


@pytest.mark.parametrize("src", [
    "ds[(a, slice(None, None, s), *space)]", "f(*b)", "[*b, 1]", "x[1:2, ::3]",
    "match x:\n    case [1, *rest]:\n        pass", "if sys.version_info >= (3, 11):\n    import tomllib\nelse:\n    import tomli",
])
def test_the_floor_check_accepts_what_3_10_has(src):
    assert above_floor(src) == []


def test_every_source_file_stays_within_the_floor():
    found = [f"{p.relative_to(REPO)}:{line}: {what}" for p in SOURCES for line, what in above_floor(p.read_text(), str(p))]
    assert found == []


def floor_interpreter() -> str | None:
    """A real Python of the floor version: $TTCLAB_FLOOR_PYTHON, python3.10 on PATH, or a pyenv build."""
    home = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    names = [os.environ.get("TTCLAB_FLOOR_PYTHON"), shutil.which("python3.10"),
             *map(str, sorted(home.glob("versions/3.10*/bin/python3.10")))]
    for exe in filter(None, names):
        probe = subprocess.run([exe, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == str(FLOOR):
            return exe
    return None


def test_every_source_file_compiles_under_a_floor_interpreter():
    """The real grammar of the floor, where one is installed (the AST check above runs everywhere)."""
    exe = floor_interpreter()
    if exe is None:
        pytest.skip("no Python 3.10 found; set TTCLAB_FLOOR_PYTHON to run this check")
    code = ("import sys\nfor p in sys.argv[1:]:\n    try:\n        compile(open(p).read(), p, 'exec')\n"
            "    except SyntaxError as e:\n        print(f'{p}:{e.lineno}: {e.msg}')")
    out = subprocess.run([exe, "-c", code, *map(str, SOURCES)], capture_output=True, text=True, check=True)
    assert out.stdout == ""
