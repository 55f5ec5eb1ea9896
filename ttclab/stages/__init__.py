"""Pipeline stages: one function per stage, each `fn(cfg, ctx, run) -> outputs`, run as one MLflow run.

A stage declares the config sections that determine its output (`key`). A downstream stage asks
`ctx.upstream(name, cfg)` for its input: the newest finished run with the same project and key is
reused, and when there is none the upstream stage runs first as its own run (get-or-run), so any
entry point works on a fresh clone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..registry import Registry

STAGES: Registry = Registry("stage")


@dataclass
class Stage:
    name: str
    fn: Callable
    key: tuple[str, ...]  # config sections whose values determine the output
    help: str = ""


def stage(name: str, key: tuple[str, ...], help: str = ""):
    def deco(fn):
        STAGES.register(name)(Stage(name, fn, key, help or (fn.__doc__ or "").strip().splitlines()[0]))
        return fn

    return deco


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here; use --device auto or cpu")
    return torch.device(device)


@dataclass
class Context:
    tracker: object
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: bool = True
    inputs: dict[str, str] = field(default_factory=dict)  # explicit upstream URIs by stage name
    parent: str | None = None  # parent run id (sweeps)
    extra_tags: dict[str, str] = field(default_factory=dict)

    def run(self, name: str, cfg, tags: dict | None = None) -> tuple[str, dict]:
        """Execute stage `name` on `cfg` as a new MLflow run -> (run id, outputs)."""
        st = STAGES.get(name)
        run_tags = {"ttclab.key": cfg.key(*st.key), **self.extra_tags, **(tags or {})}
        params = {**cfg.flat(), "runtime.device": str(self.device)}
        with self.tracker.start(cfg.name, name, params=params, tags=run_tags, parent=self.parent) as run:
            outputs = st.fn(cfg, self, run) or {}
            return run.id, outputs

    def upstream(self, name: str, cfg) -> str:
        """Run id of a finished `name` run matching cfg; runs it first if none exists."""
        found = self.tracker.find(cfg.name, name, cfg.key(*STAGES.get(name).key))
        if found is not None:
            return found
        if self.progress:
            print(f"[ttclab] no finished {name!r} run for this config yet: running it first")
        child = Context(self.tracker, self.device, self.progress, self.inputs)
        run_id, _ = child.run(name, cfg)
        return run_id


def set_threads(n: int | None = None) -> None:
    """Torch threads: `n`, else $TTCLAB_THREADS (sweep workers get their share of the cores this
    way), else 1. One thread is the default because the models are small: on an idle 2-core
    machine a second thread gains little, while on a shared one OpenMP's busy-waiting made training
    up to ~200x slower (4 s per step instead of 0.02 s). Set TTCLAB_THREADS=2 on a dedicated box."""
    torch.set_num_threads(n or int(os.environ.get("TTCLAB_THREADS", "0")) or 1)


from . import compare, demo, generate, prm, train, trc, ttc  # noqa: E402,F401  (registration)
