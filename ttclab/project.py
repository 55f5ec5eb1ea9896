"""A project: one YAML describing a study set-up, turned into typed section configs.

    name: euler1d
    problem: {type: euler1d, n_cells: 128, ...}   # dataclass chosen by `type` (PROBLEMS registry)
    data:    {...}                                # DataConfig
    model:   {type: fno, ...}                     # dataclass chosen by `type` (MODELS registry)
    train:   {...}                                # TrainConfig

A project may name one `base:` file (relative to itself) whose values it overrides. Overrides from
the command line (`--set train.epochs=3`) are applied last, with the same dotted keys used by
sweeps and by the flattened MLflow params.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .config import ConfigError, build, check_name, deep_merge, flatten, parse_override, read_yaml, set_dotted, to_dict
from .data.datasets import DataConfig
from .models import MODELS
from .models.prm import PRMConfig
from .problems import PROBLEMS
from .registry import UnknownName
from .rewards.arm import ARMConfig
from .sampling import SamplingConfig
from .ttc.search import TTCConfig
from .training.loop import TrainConfig
from .training.trc import TRCConfig
from .training.ttc_training import FilterConfig
from .training.triplet import TripletConfig

# Sections whose dataclass depends on their `type` key.
TYPED_SECTIONS = {"problem": PROBLEMS, "model": MODELS}


@dataclass
class CompareConfig:
    """Which ttc runs `ttclab compare` tables (stages/compare.py). selectors: this project's runs of one
    comparison key, a row per selector; operators: the runs of any project evaluated on the same
    held-out ICs and truth, a row per (project, operator, loss, rollout, selector)."""

    across: Literal["selectors", "operators"] = "selectors"


@dataclass
class ProjectConfig:
    name: str = "euler1d"
    seed: int = 0
    problem: Any = None
    data: DataConfig = field(default_factory=DataConfig)
    model: Any = None
    train: TrainConfig = field(default_factory=TrainConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    ttc: TTCConfig = field(default_factory=TTCConfig)
    arm: ARMConfig = field(default_factory=ARMConfig)
    triplets: TripletConfig = field(default_factory=TripletConfig)
    prm: PRMConfig = field(default_factory=PRMConfig)
    trc: TRCConfig = field(default_factory=TRCConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)

    def to_dict(self) -> dict:
        return to_dict(self)

    def flat(self) -> dict[str, Any]:
        return flatten(self.to_dict())

    def key(self, *sections: str) -> str:
        """A short hash of the named sections: equal hashes mean an upstream result can be reused."""
        d = self.to_dict()
        blob = json.dumps({s: d[s] for s in sections}, sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _raw(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    data = read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base={base!r}: expected one file name, e.g. `base: euler1d.yaml`")
    base_path = (path.parent / base).resolve()
    if not base_path.is_file():
        raise ConfigError(f"{path}: base: no such file {base_path}; fix the path (relative to this file)")
    if base_path in seen:
        raise ConfigError(f"{path}: `base: {base}` forms a cycle")
    return deep_merge(_raw(base_path, seen + (path.resolve(),)), data)


def build_project(raw: dict, source: str) -> ProjectConfig:
    raw = dict(raw)
    sections = {}
    for name, registry in TYPED_SECTIONS.items():
        section = raw.pop(name, None)
        if not isinstance(section, dict) or "type" not in section:
            raise ConfigError(f"{source}: section `{name}` needs a `type`; valid: {', '.join(registry.names())}")
        try:
            cls = registry.get(section["type"]).Config
        except UnknownName as err:
            raise ConfigError(f"{source}: {name}.type: {err}") from None
        sections[name] = build(cls, section, source, prefix=name)
    project = build(ProjectConfig, raw, source)
    check_name(project.name, "name", source)
    return dataclasses.replace(project, **sections)


def load_project(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ProjectConfig:
    path = Path(path)
    raw = _raw(path)
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(raw, key, value)
    source = str(path) + (" (with --set overrides)" if overrides else "")
    return build_project(raw, source)
