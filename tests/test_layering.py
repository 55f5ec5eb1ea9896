"""Layering: every framework stays at its edge and no import runs against the data flow.

Imports are read with `ast` from every module of ttclab/, wherever they appear (module level, inside
functions, `importlib.import_module("...")` with a literal name), so a lazy import counts too.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ttclab"

# Data-flow order: a module may import its own section and sections of lower rank only. Rank 0 is the
# foundation every layer may use. project assembles the configs of models ... training, so it comes
# after training. Sweeps run stages as trial objectives (stages know nothing of sweeps), so sweep
# comes after stages.
RANK = {
    "errors": 0, "registry": 0, "config": 0, "process": 0, "progress": 0,
    "problems": 1, "data": 2, "models": 3, "sampling": 4, "rewards": 5, "ttc": 6, "metrics": 7,
    "training": 8, "project": 9, "tracking": 10, "stages": 11, "sweep": 12, "cli": 13, "__main__": 14,
}
CORE = {"problems", "data", "models", "sampling", "rewards", "ttc", "metrics", "training", "config", "registry",
        "errors"}

# The one home of each framework: (section, module-name predicate).
HOMES = {
    "mlflow": ("tracking", lambda mod: True),
    "optuna": ("sweep", lambda mod: True),
    "click": ("cli", lambda mod: True),
    "plotly": ("tracking", lambda mod: mod.endswith("figures")),
}
# Third-party packages core modules may import: None = any core module, else the one module allowed.
# The one exception to "torch, numpy, h5py (+ yaml in config)" is tqdm, for progress bars in the
# solvers and training loops (ttclab.progress wraps it so non-terminal output gets plain lines).
CORE_THIRD_PARTY = {"torch": None, "numpy": None, "h5py": "ttclab.data.pdebench", "yaml": "ttclab.config",
                    "tqdm": None}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(src: str, mod: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the source of `mod`; `from . import x` gives pkg.x."""
    package = mod if is_package else mod.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(src, mod)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found += [(node.lineno, base if node.module else f"{base}.{a.name}") for a in node.names]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
              in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant)):
            found.append((node.lineno, str(node.args[0].value)))
    return found


def section(mod: str) -> str:
    """ttclab.models.fno -> models; ttclab (the package itself) -> ttclab."""
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def edges_of(mod: str, src: str, is_package: bool = False) -> list[tuple[str, int, str]]:
    return [(mod, line, target) for line, target in imports(src, mod, is_package)]


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
EDGES = [e for mod, p in MODULES.items() for e in edges_of(mod, p.read_text(), p.name == "__init__.py")]


def where(mod: str, line: int) -> str:
    path = MODULES.get(mod)
    return f"{path.relative_to(PACKAGE.parent) if path else mod}:{line}"


def against_flow(edges) -> list[str]:
    return [f"{where(mod, line)}: {section(mod)} imports {target}" for mod, line, target in edges
            if target.startswith("ttclab.") and section(mod) in RANK and section(target) in RANK
            and RANK[section(target)] > RANK[section(mod)]]


def outside_home(edges) -> list[str]:
    bad = []
    for mod, line, target in edges:
        framework = target.split(".")[0]
        if framework in HOMES:
            home, ok = HOMES[framework]
            if section(mod) != home or not ok(mod):
                bad.append(f"{where(mod, line)}: {framework} outside its home ttclab/{home}")
    return bad


def core_third_party(edges) -> list[str]:
    bad = []
    for mod, line, target in edges:
        top = target.split(".")[0]
        if section(mod) not in CORE or top == "ttclab" or top in sys.stdlib_module_names:
            continue
        if top not in CORE_THIRD_PARTY or CORE_THIRD_PARTY[top] not in (None, mod):
            bad.append(f"{where(mod, line)}: core module imports {top}")
    return bad


def test_every_section_has_a_rank():
    sections = {section(m) for m in MODULES} - {"ttclab"}
    assert sections <= set(RANK), f"add {sorted(sections - set(RANK))} to RANK in data-flow order"


def test_no_import_runs_against_the_data_flow():
    assert against_flow(EDGES) == []


def test_each_framework_is_imported_only_in_its_home():
    assert outside_home(EDGES) == []


def test_core_modules_import_only_torch_numpy_h5py():
    assert core_third_party(EDGES) == []


@pytest.mark.parametrize("src, mod, check, expect", [
    ("import mlflow", "ttclab.ttc.search", outside_home, "mlflow outside"),
    ("def f():\n    import optuna", "ttclab.training.loop", outside_home, "optuna outside"),
    ("import importlib\nimportlib.import_module('plotly.graph_objects')", "ttclab.tracking.store", outside_home,
     "plotly outside"),
    ("import click", "ttclab.stages.train", outside_home, "click outside"),
    ("from ..training import loop", "ttclab.rewards.prm", against_flow, "rewards imports ttclab.training"),
    ("from ..stages import STAGES", "ttclab.tracking.store", against_flow, "tracking imports ttclab.stages"),
    ("from .. import sampling", "ttclab.models.fno", against_flow, "models imports ttclab.sampling"),
    ("import scipy.linalg", "ttclab.rewards.arm", core_third_party, "core module imports scipy"),
    ("import h5py", "ttclab.models.checkpoint", core_third_party, "core module imports h5py"),
    ("import yaml", "ttclab.metrics.ttc", core_third_party, "core module imports yaml"),
])
def test_the_checks_report_a_planted_violation(src, mod, check, expect):
    found = check(edges_of(mod, src))
    assert found and expect in found[0]
