"""Control rollouts computed once per comparison, across processes.

A control (baseline, random, ensemble, oracle) depends on the operator and data files, the
sampler, N, K, split, ICs and candidate seed, never on the selector under test or its weights
(`arm`, `prm` sections). So a sweep over ARM weights, or a second `ttclab ttc` call, would repeat
the same four rollouts. Each one is keyed by

    key = sha1(train closure sections, sampling, ttc less search.SELECTOR_KEYS (reward, projection, ...),
               operator/data file identity (path, size, mtime), device, the rollout code's identity,
               control name, projection)

(the rollout code: a hash of the source of ttc/, sampling/, rewards/, models/ and problems/, so a
control computed by other search code is never reused after an upgrade or a local edit)

and stored with the run that computed it: artifact `controls/<label>.pt` (the trajectory), then
tag `ttclab.control.<label>=<key>` (label `<name>` or `<name>_proj`; MLflow tag keys allow no `+`).
The tag is set only after the artifact is complete, so any run carrying it, finished or still
running, holds a usable trajectory; later runs and sweep trials load it instead of rolling out and
say where from in tag `ttclab.control_from.<label>` (`runs:/<id>/controls/<label>.pt`).
Within one process the evaluated rollout is also memoized (the demo's nine ttc runs).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch

from ..ttc.search import SELECTOR_KEYS
from . import STAGES

_MEMO: dict = {}
_MEMO_MAX = 16  # a long sweep process must not grow without bound


def label(name: str, project: bool) -> str:
    return f"{name}_proj" if project else name


def _file_identity(path) -> list:
    """A file's path, size and mtime: a rewritten operator or data file at the same path is a new key."""
    st = os.stat(path)
    return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]


@functools.lru_cache(maxsize=1)
def _code_identity() -> str:
    """sha1 of the source that computes a control rollout (search, candidates, rewards, operators, physics)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha1()
    for path in sorted(p for d in ("ttc", "sampling", "rewards", "models", "problems") for p in (root / d).rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def base_key(cfg, op_path, data_path, device) -> str:
    """Everything that determines a control rollout except which control and the projection flag."""
    d = cfg.to_dict()
    ttc = {k: v for k, v in d["ttc"].items() if k not in SELECTOR_KEYS}
    sections = {s: d[s] for s in STAGES.get("train").key}
    blob = json.dumps([sections, d["sampling"], ttc, _file_identity(op_path), _file_identity(data_path), str(device),
                       _code_identity()], sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def control_key(base: str, name: str, project: bool) -> str:
    return hashlib.sha1(f"{base}/{label(name, project)}".encode()).hexdigest()[:16]


def _stored(tracker, lab: str, key: str, device) -> tuple[torch.Tensor | None, str]:
    """(trajectory, run id) of the newest run tagged with `key` for `lab`; (None, "") when no run
    (or no readable file) has it."""
    for found in tracker.runs({f"ttclab.control.{lab}": key}):
        try:
            path = tracker.artifact_dir(found.info.run_id) / "controls" / f"{lab}.pt"
            return torch.load(path, map_location=device, weights_only=True), found.info.run_id
        except (OSError, RuntimeError):  # a deleted or partly copied store: recompute
            continue
    return None, ""


def trajectory(ctx, run, base: str, name: str, project: bool, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The control's trajectory: from a run that stored it under the same key, else `compute()`d
    and stored with `run` (artifact first, then the tag that makes it findable)."""
    key, lab = control_key(base, name, project), label(name, project)
    traj, source = _stored(ctx.tracker, lab, key, ctx.device)
    if traj is not None:
        run.tags({f"ttclab.control_from.{lab}": f"runs:/{source}/controls/{lab}.pt"})
        return traj
    traj = compute()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{lab}.pt"
        torch.save(traj.detach().cpu(), path)
        run.artifact(path, "controls")
    run.tags({f"ttclab.control.{lab}": key})
    return traj


def evaluated(ctx, run, base: str, name: str, project: bool, compute: Callable[[], torch.Tensor],
              evaluate: Callable[[torch.Tensor], dict]) -> dict:
    """`evaluate(trajectory(...))`, memoized in this process by the same key."""
    key = control_key(base, name, project)
    if key not in _MEMO:
        if len(_MEMO) >= _MEMO_MAX:
            _MEMO.clear()
        _MEMO[key] = evaluate(trajectory(ctx, run, base, name, project, compute))
    else:
        run.tags({f"ttclab.control_from.{label(name, project)}": "memo (this process)"})
    return _MEMO[key]
