"""Operator checkpoints: plain `torch.save` dicts (configs as dicts, normalization, weights) that load
with `torch.load(weights_only=True)`, so opening a checkpoint never runs pickled code."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..config import ConfigError, build
from ..data.datasets import Normalizer
from ..errors import UserError
from ..problems import PROBLEMS, make_problem
from ..problems.base import physics_mismatch
from . import MODELS, OperatorError, make_operator

FORMAT = "ttclab.operator/1"


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot serve the requested problem; the message names the file and fix."""


def save(path: str | Path, *, problem_cfg: dict, model_cfg: dict, normalizer: Normalizer, model, **extra) -> Path:
    """Operator checkpoint: configs as dicts, normalization and weights, written atomically."""
    blob = {
        "format": FORMAT,
        "problem": problem_cfg,
        "model": model_cfg,
        "norm_mean": normalizer.mean.cpu(),
        "norm_std": normalizer.std.cpu(),
        "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
        **extra,
    }
    return atomic_save(blob, path)


def atomic_save(blob: dict, path: str | Path) -> Path:
    """torch.save to a temp file, then rename: a crash mid-save never leaves a truncated file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)
    return path


def read(path: str | Path, fmt: str = FORMAT, fix: str = "train one with `ttclab train` or fix the URI",
         kind: str = "", error: type = None, keys: tuple[str, ...] = ()) -> dict:
    """Load a checkpoint dict of format `fmt` with weights_only=True; a missing, unreadable or
    foreign file, or one without every entry in `keys`, raises `error` (default CheckpointError)
    naming the path, the problem and `fix`."""
    path, error = Path(path), error or CheckpointError
    if not path.is_file():
        raise error(f"{path}: no such {kind}checkpoint; {fix}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or foreign files
        why = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:80]}" if str(err).strip() else type(err).__name__
        raise error(f"{path}: not a readable ttclab {kind}checkpoint ({why}); {fix}") from None
    if not isinstance(blob, dict) or blob.get("format") != fmt:
        found = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
        raise error(f"{path}: not a {fmt} checkpoint (found {found!r}); {fix}")
    missing = [k for k in keys if k not in blob]
    if missing:
        raise error(f"{path}: {kind}checkpoint has no {missing[0]!r} entry (truncated or edited?); {fix}")
    return blob


def weights_mismatch(model, state_dict: dict) -> str | None:
    """The first entry where `state_dict` does not fit `model`, as "name (file shape) vs (model
    shape)" (None for a missing side), or None when every name and shape fits."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    if want == got:
        return None
    bad = sorted(set(want) ^ set(got)) or [k for k in want if want[k] != got[k]]
    return f"{bad[0]} {got.get(bad[0])} vs {want.get(bad[0])}"


def load_operator(path: str | Path, expect_problem=None, device="cpu"):
    """-> (model in eval mode, Normalizer, problem). Checks that the checkpoint's problem and weight
    shapes match before loading, so a wrong checkpoint fails with a message, not a size mismatch.
    `expect_problem` is a problem type name, or the project's problem config: then the checkpoint's
    physics (grid, domain, gamma/nu) must equal the project's too, so the physics a stage computes
    with is the physics its run logs."""
    blob = read(path, keys=("problem", "model", "state_dict", "norm_mean", "norm_std"))
    pcfg_d, mcfg_d = blob["problem"], blob["model"]
    expect_type = getattr(expect_problem, "type", expect_problem)
    if expect_type is not None and pcfg_d.get("type") != expect_type:
        raise CheckpointError(
            f"{path}: checkpoint is for problem {pcfg_d.get('type')!r}, not {expect_type!r}; "
            f"pass an operator trained on {expect_type}"
        )
    try:
        problem = make_problem(build(PROBLEMS.get(pcfg_d["type"]).Config, pcfg_d, str(path), "problem"))
        mcfg = build(MODELS.get(mcfg_d["type"]).Config, mcfg_d, str(path), "model")
        model = make_operator(mcfg, n_fields=problem.n_fields, ndim=problem.ndim)
    except (ConfigError, KeyError, OperatorError) as err:
        raise CheckpointError(f"{path}: stored config is invalid ({err}); retrain it") from None
    bad = weights_mismatch(model, blob["state_dict"])
    if bad:
        raise CheckpointError(
            f"{path}: weights do not match a {mcfg_d['type']} with the stored config (first mismatch: "
            f"{bad}); the file is corrupt or from another version"
        )
    if not isinstance(expect_problem, (str, type(None))):
        check_physics(path, problem, make_problem(expect_problem))
    model.load_state_dict(blob["state_dict"])
    normalizer = Normalizer(blob["norm_mean"], blob["norm_std"])
    return model.to(device).eval(), normalizer.to(device), problem


def check_physics(path, stored, project) -> None:
    """Refuse a checkpoint trained under other physics than the project states (one line, both values)."""
    wrong = physics_mismatch(stored, project)
    if wrong:
        diffs = ", ".join(f"{k}={v} (project: {w})" for k, v, w in wrong)
        sets = " ".join(f"--set problem.{k}={_cli(v)}" for k, v, _ in wrong)
        raise CheckpointError(f"{path}: operator was trained with {diffs}; run with {sets} or train an operator "
                              f"for this project")


def _cli(value) -> str:
    return "[" + ",".join(str(v) for v in value) + "]" if isinstance(value, (list, tuple)) else str(value)
