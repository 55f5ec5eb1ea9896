"""Sweep specs: YAML -> validated dataclasses, checked against the project before any trial runs.

    name: arm-weights-euler1d          # Optuna study name == MLflow parent run name
    project: projects/euler1d.yaml     # base config of every trial
    stage: ttc                         # the stage each trial runs
    objective: {metric: rollout_mse/h16, direction: minimize, split: val}   # or a list (Pareto)
    n_trials: 30
    sampler: {type: tpe, seed: 0}      # tpe | random | grid | cmaes | nsga2
    pruner: {type: median}             # median | wilcoxon | none
    fixed: {ttc.reward: arm}
    space:
      arm.w_mass: {type: float, low: 0.0, high: 10.0}

Keys in `fixed` and `space` are the dotted `--set` keys. Every error names the spec file and the key.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, build, check_name, read_yaml
from ..project import ProjectConfig, load_project
from ..stages import STAGES

SAMPLERS = ("tpe", "random", "grid", "cmaes", "nsga2")
PRUNERS = ("median", "wilcoxon", "none")
# The key that selects a stage's evaluation split: trials tune on `objective.split` (val) and the
# best config is re-run with it set to test. Other stages name the split in their metric keys.
SPLIT_KEYS = {"ttc": "ttc.split", "trc": "trc.eval_split"}


@dataclass
class ParamSpec:
    type: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: list | None = None

    def validate(self):
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty `choices` list")
            if any(v is not None for v in (self.low, self.high, self.step)) or self.log:
                raise ValueError("a categorical parameter takes only `choices`")
            if not all(v is None or isinstance(v, (bool, int, float, str)) for v in self.choices):
                raise ValueError("choices must be numbers, strings, booleans or null (Optuna stores scalars)")
            return
        if self.type not in ("float", "int"):
            raise ValueError(f"type {self.type!r} is not one of float, int, categorical")
        if self.low is None or self.high is None or self.choices is not None:
            raise ValueError(f"a {self.type} parameter needs `low` and `high` (and no `choices`)")
        if not self.low < self.high:
            raise ValueError(f"need low < high, got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError("log: true needs low > 0")
        if self.step is not None and (self.step <= 0 or self.log):
            raise ValueError("step must be > 0 and cannot be combined with log: true")
        if self.type == "int" and any(v is not None and v != int(v) for v in (self.low, self.high, self.step)):
            raise ValueError("an int parameter needs integer low, high and step")

    def grid(self) -> list:
        """The values a grid sampler visits: the choices, or low..high by step."""
        if self.type == "categorical":
            return list(self.choices)
        step = self.step or 1
        count = int(math.floor((self.high - self.low) / step + 1e-9)) + 1
        values = [self.low + i * step for i in range(count)]
        return [int(v) for v in values] if self.type == "int" else values

    def probes(self) -> list:
        """Values that must all build into a valid config before the sweep starts."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]


@dataclass
class ObjectiveSpec:
    metric: str
    direction: str = "minimize"
    split: str = ""  # evaluation split of stages with a split key; default val
    prune_on: str = ""  # glob of reported keys feeding the pruner; default derived from metric

    def validate(self):
        if self.direction not in ("minimize", "maximize"):
            raise ValueError(f"direction {self.direction!r} is not minimize or maximize")
        if self.split not in ("", "train", "val", "test"):
            raise ValueError(f"split {self.split!r} is not train, val or test")

    @property
    def report_glob(self) -> str:
        """`rollout_mse/h16` prunes on every reported horizon `rollout_mse/h*`; other metrics on
        reports of the same key."""
        return self.prune_on or re.sub(r"/h\d+$", "/h*", self.metric)


@dataclass
class SamplerSpec:
    type: str = "tpe"
    seed: int = 0

    def validate(self):
        if self.type not in SAMPLERS:
            raise ValueError(f"type {self.type!r} is not one of {', '.join(SAMPLERS)}")


@dataclass
class PrunerSpec:
    type: str = "median"
    n_startup_trials: int = 5  # completed trials before anything is pruned
    n_warmup_steps: int = 0  # reported steps of a trial before it may be pruned

    def validate(self):
        if self.type not in PRUNERS:
            raise ValueError(f"type {self.type!r} is not one of {', '.join(PRUNERS)}")


@dataclass
class SweepSpec:
    name: str
    project: str
    stage: str
    objective: list[ObjectiveSpec]
    n_trials: int = 20
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    pruner: PrunerSpec = field(default_factory=PrunerSpec)
    fixed: dict[str, Any] = field(default_factory=dict)
    space: dict[str, Any] = field(default_factory=dict)  # dotted key -> ParamSpec
    source: str = field(default="<spec>", init=False)  # the spec file, for error messages

    @property
    def multi(self) -> bool:
        return len(self.objective) > 1

    @property
    def split(self) -> str:
        return self.objective[0].split

    @property
    def split_key(self) -> str | None:
        return SPLIT_KEYS.get(self.stage)

    def grid_size(self) -> int:
        return math.prod(len(p.grid()) for p in self.space.values())

    def overrides(self, params: dict[str, Any], split: str | None = None) -> list[str]:
        """`--set` texts for one trial: fixed keys, the split (val for trials, test for the final
        re-run), then the trial's parameters. JSON values parse back exactly as YAML."""
        values = dict(self.fixed)
        if self.split_key and (split or self.split):
            values[self.split_key] = split or self.split
        values.update(params)
        return [f"{k}={json.dumps(v)}" for k, v in values.items()]

    def config(self, params: dict[str, Any], split: str | None = None) -> ProjectConfig:
        return load_project(self.project, self.overrides(params, split))


def _fail(source: str, key: str, msg: str):
    raise ConfigError(f"{source}: {key}: {msg}")


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a spec, including every key and value against its project config."""
    source = str(path)
    raw = read_yaml(path)
    for key, example in (("name", "name: my-sweep"), ("project", "project: projects/euler1d.yaml"),
                         ("stage", "stage: ttc"), ("objective", "objective: {metric: rollout_mse/h16, "
                                                   "direction: minimize, split: val}"), ("space", "space: {...}")):
        if not raw.get(key):
            _fail(source, key, f"missing; add e.g. `{example}`")
    for key in ("fixed", "space"):
        if not isinstance(raw.get(key, {}), dict):
            _fail(source, key, "must be a mapping of dotted config keys")
    objective = raw["objective"]
    raw["objective"] = objective if isinstance(objective, list) else [objective]
    space = raw.pop("space")
    spec = build(SweepSpec, raw, source)
    spec.source = source
    check_name(spec.name, "name", source)
    for key, value in space.items():
        if not isinstance(value, dict):
            _fail(source, f"space.{key}", "must be a mapping, e.g. {type: float, low: 0.0, high: 1.0}")
    spec.space = {k: build(ParamSpec, v, source, prefix=f"space.{k}") for k, v in space.items()}
    spec.project = str(_resolve_project(spec.project, Path(path)))
    _check(spec)
    return spec


def _resolve_project(project: str, spec_path: Path) -> Path:
    """Relative to the current directory (the repo root, as in the issue's examples), else to the
    spec file."""
    for candidate in (Path(project), spec_path.parent / project):
        if candidate.is_file():
            return candidate.resolve()
    return Path(project)


def _check(spec: SweepSpec) -> None:
    src = spec.source
    if spec.stage not in STAGES:
        _fail(src, "stage", f"unknown stage {spec.stage!r}; valid: {', '.join(STAGES.names())}")
    if spec.n_trials < 1:
        _fail(src, "n_trials", "must be >= 1")
    splits = {o.split for o in spec.objective}
    if len(splits) > 1:
        _fail(src, "objective", "all objectives must use the same split")
    if spec.split_key is None and spec.split:
        _fail(src, "objective.split", f"stage {spec.stage!r} has no split key; its metric names the split "
                                      "(e.g. val/loss), so drop `split`")
    if spec.split_key:
        spec.objective = [ObjectiveSpec(o.metric, o.direction, o.split or "val", o.prune_on) for o in spec.objective]
    if spec.multi and spec.sampler.type == "cmaes":
        _fail(src, "sampler.type", "cmaes is single-objective; use nsga2 (or tpe) for several objectives")
    if spec.split == "test":
        _fail(src, "objective.split", "tuning on test would report tuned-on numbers; tune on val (the best "
                                      "config is re-run on test at the end)")
    if spec.sampler.type == "grid" and any(p.type == "float" and p.step is None for p in spec.space.values()):
        _fail(src, "sampler.type", "grid needs `step` on every float parameter (or categorical choices)")
    for key in set(spec.fixed) & set(spec.space):
        _fail(src, f"space.{key}", "is also in `fixed`; keep it in one of them")
    for key in (set(spec.fixed) | set(spec.space)) & {spec.split_key}:
        _fail(src, key, "the split is set by objective.split (val) and by the final re-run (test)")
    if not Path(spec.project).is_file():
        _fail(src, "project", f"no such file {spec.project} (relative paths: to the current directory or the spec)")
    for key, value in spec.fixed.items():
        try:
            load_project(spec.project, [f"{key}={json.dumps(value)}"])
        except ConfigError as err:
            _fail(src, f"fixed.{key}", str(err))
    flat = spec.config({}).flat()
    for key, param in spec.space.items():
        _check_param(spec, key, param, flat)


def _check_param(spec: SweepSpec, key: str, param: ParamSpec, flat: dict) -> None:
    where = f"space.{key}"
    current = flat.get(key)
    if key in flat:
        if isinstance(current, (bool, str)) and param.type != "categorical":
            _fail(spec.source, where, f"{key} is a {type(current).__name__} setting; use type: categorical")
        if isinstance(current, int) and not isinstance(current, bool) and param.type == "float":
            _fail(spec.source, where, f"{key} is an integer setting; use type: int")
    for value in param.probes():
        try:
            spec.config({key: value})
        except ConfigError as err:
            _fail(spec.source, where, str(err))
