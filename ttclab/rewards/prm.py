"""The learned reward: a trained PRM checkpoint wrapped in the reward contract.

Checkpoint (`model/prm.pt` of a `train_prm` run): a plain dict that loads with
`torch.load(weights_only=True)`:
    format "ttclab.prm/1", prm (PRMConfig as a dict), problem (problem config dict), n_fields, ndim,
    norm_mean / norm_std (the operator's normalizer, so the PRM sees states as it was trained),
    state_dict, operator (for anchor="operator": the operator checkpoint dict, embedded so the reward
    needs no other file; None otherwise), plus training summary values.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import ConfigError, build
from ..data.datasets import Normalizer
from ..models import MODELS, make_model
from ..models.prm import PRM, PRMConfig
from ..models import checkpoint
from . import Reward, register

FORMAT = "ttclab.prm/1"


class PRMCheckpointError(checkpoint.CheckpointError):
    """A PRM checkpoint that cannot be used; the message names the file and the fix."""


def save_prm(path: str | Path, model: PRM, normalizer: Normalizer, problem_cfg: dict, prm_cfg: dict,
             n_fields: int, **extra) -> Path:
    """Atomic write (temp file + rename), like the operator checkpoints."""
    blob = {"format": FORMAT, "prm": prm_cfg, "problem": problem_cfg, "n_fields": n_fields, "ndim": model.ndim,
            "norm_mean": normalizer.mean.cpu(), "norm_std": normalizer.std.cpu(),
            "state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, **extra}
    return checkpoint.atomic_save(blob, path)


def load_prm(path: str | Path, device="cpu", expect_problem: str | None = None):
    """-> (PRM in eval mode, operator Normalizer, embedded operator in eval mode or None)."""
    fix = "train one with `ttclab train_prm` or pass the model/prm.pt of a train_prm run"
    blob = checkpoint.read(path, FORMAT, fix, kind="PRM ", error=PRMCheckpointError)
    problem = blob["problem"].get("type")
    if expect_problem is not None and problem != expect_problem:
        raise PRMCheckpointError(f"{path}: PRM was trained on {problem!r}, not {expect_problem!r}; {fix}")
    try:
        cfg = build(PRMConfig, blob["prm"], str(path), "prm")
        model = PRM(cfg, n_fields=blob["n_fields"], ndim=blob["ndim"])
        model.load_state_dict(blob["state_dict"])
        operator = _operator(blob, path) if cfg.anchor == "operator" else None
    except (ConfigError, KeyError, RuntimeError, ValueError) as err:
        raise PRMCheckpointError(f"{path}: stored PRM does not load ({str(err).splitlines()[0]}); {fix}") from None
    normalizer = Normalizer(blob["norm_mean"], blob["norm_std"])
    operator = None if operator is None else operator.to(device).eval()
    return model.to(device).eval(), normalizer.to(device), operator


def _operator(blob: dict, path: Path):
    """The embedded operator of an anchor="operator" PRM."""
    op = blob.get("operator")
    if not isinstance(op, dict) or op.get("format") != checkpoint.FORMAT:
        raise checkpoint.CheckpointError(f"{path}: anchor='operator' but no embedded operator checkpoint; "
                                         "retrain it with `ttclab train_prm`")
    mcfg = build(MODELS.get(op["model"]["type"]).Config, op["model"], str(path), "operator.model")
    model = make_model(mcfg, n_fields=blob["n_fields"], ndim=blob["ndim"])
    model.load_state_dict(op["state_dict"])
    return model


@register("prm")
class PRMReward(Reward):
    """Scores from a trained PRM. `problem` (the ttc stage always passes it) refuses a PRM trained
    on another problem. With anchor="operator" each call runs the embedded operator once per state
    (B forward passes, not B*N): `operator_evals_per_state` says so for compute accounting."""

    rank = 40

    def __init__(self, prm_path: str | Path | None = None, device="cpu", problem=None, **_):
        if prm_path is None:
            raise ValueError("the prm reward needs prm_path (the model/prm.pt of a train_prm run)")
        self.device = device
        self.model, self.normalizer, self.operator = load_prm(prm_path, device, getattr(problem, "name", None))
        self.operator_evals_per_state = int(self.operator is not None)

    @torch.no_grad()
    def score(self, candidates, prev, truth=None):
        ndim, norm = prev.ndim - 2, self.normalizer
        s = norm.encode(prev.to(self.device), ndim)
        c = norm.encode(candidates.to(self.device).flatten(0, 1), ndim).view(candidates.shape)
        anchor = None if self.operator is None else self.operator(s)
        return self.model(s, c, anchor).to(candidates.device)
