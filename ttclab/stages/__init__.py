"""Pipeline stages: one function per stage, each `fn(cfg, ctx, run) -> outputs`, run as one MLflow run.

A stage declares, once, in `@stage(name, key=..., inputs=...)`, the config sections it reads
itself (`key`) and the upstream results it reads (`inputs`, each an `Input` naming its source stage
and artifact). The graph follows from that: a stage's `needs` are its inputs' sources, and its run
key covers its own sections and those of every stage upstream. A stage reads an input only through
`ctx.input(name, cfg)`: the explicit `--input name=URI` if given, else the artifact of the newest
finished source run with the same project and key, the source stage running first when there is
none (get-or-run), so any entry point works on a fresh clone. The CLI's `--input` check, the
sweep's shared-upstream precomputation and `compare` read the same declaration. For example:

    PRM = Input("prm", "train_prm", "model/prm.pt")             # stages/common.py

    @stage("ttc", key=("sampling", "ttc", "arm"),                # -> needs generate, train (+ train_prm)
           inputs=(DATA, OPERATOR, PRM.when(lambda cfg: cfg.ttc.reward == "prm")))
    def ttc(cfg, ctx, run):
        path = ctx.input("prm", cfg)                             # only when ttc.reward is prm
"""

from __future__ import annotations

import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import ConfigError
from ..problems import physics_tags
from ..process import keep_freed_memory, own_usage
from ..registry import Registry
from ..training import distributed

STAGES: Registry = Registry("stage")


def _always(cfg) -> bool:
    return True


@dataclass(frozen=True)
class Input:
    """An upstream result a stage reads, overridable by `--input NAME=URI`. By default it is the
    artifact `path` ("{problem}" = problem.type) of the newest finished run of stage `source` whose
    key matches, run first when there is none; `source=None` marks an input that exists only when
    given (a checkpoint to resume from). `needed(cfg)` says whether a config reads it at all."""

    name: str
    source: str | None = None
    path: str = ""
    needed: Callable[[Any], bool] = _always

    def when(self, needed: Callable[[Any], bool]) -> Input:
        """The same input, read only by configs for which `needed(cfg)` holds."""
        return replace(self, needed=needed)

    def artifact(self, cfg) -> str:
        return self.path.format(problem=cfg.problem.type)


@dataclass
class Stage:
    name: str
    fn: Callable
    own: tuple[str, ...]  # config sections the stage itself reads
    inputs: tuple[Input, ...] = ()
    help: str = ""
    run_name: Callable[[Any], str] | None = None  # cfg -> the run's name in the UI (default: the stage name)
    registers: str | None = None  # model kind its model/ folder is registered as (ttclab-<project>-<kind>)
    system_metrics: bool = False  # log CPU/memory/GPU use (the long trainings; sweep trials always do)

    def name_for(self, cfg, tags: dict) -> str:
        """The run's display name: `trial <n>` for a sweep trial (its parent names the sweep), else
        the stage's `run_name(cfg)`, which carries the settings that tell its runs apart."""
        if "ttclab.trial" in tags:
            return f"trial {tags['ttclab.trial']}"
        return self.run_name(cfg) if self.run_name is not None else self.name

    @property
    def key(self) -> tuple[str, ...]:
        """Config sections that determine the output: its own and, through every input it may
        read, those of each upstream stage (so a ttc run's key covers the PRM's sections)."""
        sections = dict.fromkeys(self.own)
        for inp in self.inputs:
            if inp.source is not None:
                sections.update(dict.fromkeys(STAGES.get(inp.source).key))
        return tuple(sections)

    def needed(self, cfg) -> tuple[Input, ...]:
        return tuple(inp for inp in self.inputs if inp.needed(cfg))

    def needs(self, cfg) -> tuple[str, ...]:
        """Upstream stages a run on cfg gets (or runs) when no input is given explicitly."""
        return tuple(dict.fromkeys(inp.source for inp in self.needed(cfg) if inp.source is not None))

    def input(self, name: str, cfg) -> Input:
        """The declared input `name`; reading one the declaration leaves out is a bug in the stage."""
        for inp in self.inputs:
            if inp.name == name:
                if not inp.needed(cfg):
                    raise LookupError(f"stage {self.name!r} reads input {name!r}, which its declaration "
                                      "says this config does not need; fix its `when` in @stage(inputs=...)")
                return inp
        raise LookupError(f"stage {self.name!r} reads input {name!r} but declares only "
                          f"{input_names(self.name)}; add it to @stage(inputs=...)")


def stage(name: str, key: tuple[str, ...], inputs: tuple[Input, ...] = (), help: str = "",
          run_name: Callable[[Any], str] | None = None, registers: str | None = None,
          system_metrics: bool = False):
    """Register `fn(cfg, ctx, run)` as stage `name` reading the config sections `key` and `inputs`;
    its runs are named `run_name(cfg)`, e.g. `lambda cfg: f"train · {cfg.model.type} · s{cfg.seed}"`,
    and a finished run's model/ folder becomes a version of `ttclab-<project>-<registers>`."""
    if len({inp.name for inp in inputs}) < len(inputs):
        raise ValueError(f"stage {name!r} declares an input name twice")

    def deco(fn):
        STAGES.register(name)(Stage(name, fn, key, inputs, help or (fn.__doc__ or "").strip().splitlines()[0],
                                         run_name, registers, system_metrics))
        return fn

    return deco


def input_names(stage: str) -> tuple[str, ...]:
    """The `--input` names stage `stage` accepts."""
    return tuple(inp.name for inp in STAGES.get(stage).inputs)


def unread_inputs(stage: str, cfg, names) -> list[str]:
    """Those of `names` that neither `stage` nor any stage it may run first reads with cfg (given
    inputs pass on to upstream runs: `ttc --input data=URI` trains on that data if it must train)."""
    read, todo = set(), [stage]
    while todo:
        st = STAGES.get(todo.pop())
        read.update(inp.name for inp in st.needed(cfg))
        todo.extend(st.needs(cfg))
    return [name for name in names if name not in read]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available here; use --device auto or cpu")
    return torch.device(device)


@dataclass
class Context:
    tracker: object
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: bool = True
    inputs: dict[str, str] = field(default_factory=dict)  # explicit URIs by input name (--input)
    parent: str | None = None  # parent run id (sweeps)
    extra_tags: dict[str, str] = field(default_factory=dict)
    stage: str | None = None  # the stage running in this context, whose declared inputs it reads
    current: object = None  # the Run of that stage

    def run(self, name: str, cfg, tags: dict | None = None) -> tuple[str, dict]:
        """Execute stage `name` on `cfg` as a new MLflow run -> (run id, outputs)."""
        st = STAGES.get(name)
        run_tags = {"ttclab.key": cfg.key(*st.key), **physics_tags(cfg.problem), **self.extra_tags, **(tags or {})}
        params = {**cfg.flat(), "runtime.device": str(self.device)}
        for dead in self.tracker.close_dead_runs():
            print(f"[ttclab] closed run {dead.info.run_id} ({dead.data.tags.get('ttclab.stage')}) as FAILED: "
                  f"its process {dead.data.tags.get('ttclab.pid')} is gone", file=sys.stderr)
        watched = st.system_metrics or "ttclab.trial" in run_tags
        with self.tracker.start(cfg.name, name, params=params, tags=run_tags, parent=self.parent,
                                name=st.name_for(cfg, run_tags)) as run:
            with self.tracker.system_metrics(run.id) if watched else nullcontext(), own_usage() as usage:
                outputs = st.fn(cfg, replace(self, stage=name, current=run), run) or {}
            # What the run itself cost, upstream runs made on demand inside it left out.
            run.log({"cost/peak_rss_mb": usage.peak_mb, "cost/run_s": usage.seconds})
            if st.registers is not None:
                version = self.tracker.register(cfg.name, st.registers, run.id)
                run.tags({"ttclab.model_version": f"ttclab-{cfg.name}-{st.registers}/{version}"})
            return run.id, outputs

    def input(self, name: str, cfg) -> Path | None:
        """Path of the running stage's input `name`: `--input name=URI` if given, else the declared
        artifact of the matching source run (get-or-run); None for an optional input not given."""
        inp = STAGES.get(self.stage).input(name, cfg)
        if name in self.inputs:
            return self.tracker.resolve(self.inputs[name], Path(inp.artifact(cfg)).name)
        if inp.source is None:
            return None
        return self.tracker.artifact_dir(self.upstream(inp.source, cfg)) / inp.artifact(cfg)

    def dataset(self, path: Path, split: str, context: str) -> Path:
        """Record on the running stage's run that it read `split` of the data file `path` for
        `context` (training | evaluation): the Dataset column of the runs table. Returns `path`."""
        if self.current is not None:
            self.current.dataset(path, split, context)
        return path

    def upstream(self, name: str, cfg) -> str:
        """Run id of a finished `name` run matching cfg; runs it first if none exists. Look-up and
        run hold a lock per (project, stage, key), so processes starting together on a fresh store
        run it once: the others wait for the lock and then find the finished run."""
        key = cfg.key(*STAGES.get(name).key)
        found = self.tracker.find(cfg.name, name, key)
        if found is not None:
            return found
        with self.tracker.lock(f"{cfg.name}-{name}-{key}"):
            found = self.tracker.find(cfg.name, name, key)
            if found is not None:
                return found
            if self.progress:
                print(f"[ttclab] no finished {name!r} run for this config yet: running it first")
            child = Context(self.tracker, self.device, self.progress, self.inputs)
            # Under torchrun only rank 0 gets here (the others wait in find); the whole upstream run,
            # its MLflow calls included, is left out of the cost of the run that needed it.
            with distributed.solo(), own_usage():
                run_id, _ = child.run(name, cfg)
            return run_id


def configure_process(n: int | None = None) -> None:
    """What every ttclab process (CLI stage, sweep worker, benchmark) sets up before it computes.
    Torch threads: `n`, else $TTCLAB_THREADS (sweep workers get their share of the cores this
    way), else 1. One thread is the default because the models are small: on an idle 2-core
    machine a second thread gains little, while on a shared one OpenMP's busy-waiting made training
    up to ~200x slower (4 s per step instead of 0.02 s). Set TTCLAB_THREADS=2 on a dedicated box.
    And the allocator keeps freed tensor memory (process.keep_freed_memory: 1.37x on a fresh process's TTC)."""
    torch.set_num_threads(n or int(os.environ.get("TTCLAB_THREADS", "0")) or 1)
    keep_freed_memory()


from . import compare, demo, filter, generate, prm, train, trc, ttc  # noqa: E402,F401  (registration)
