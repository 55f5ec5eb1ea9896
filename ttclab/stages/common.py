"""The inputs stages pass to one another: each `Input` names its `--input` name, the stage whose run
holds it and the artifact path there; stages list them in `@stage(inputs=...)`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..sampling.ensemble import EnsembleError, member_seeds
from . import Input

DATA_ARTIFACT = "data"
OPERATOR_ARTIFACT = "model/operator.pt"
PRM_ARTIFACT = "model/prm.pt"
CALIBRATION_ARTIFACT = "prm_calibration.json"  # train_prm's held-out reliability buckets (metrics.prm.calibration)
TRIPLETS_ARTIFACT = "prm/triplets.h5"

# An explicit data.path replaces the generated data set, so only configs without one read it.
DATA = Input("data", "generate", DATA_ARTIFACT + "/{problem}.h5").when(lambda cfg: not cfg.data.path)
OPERATOR = Input("operator", "train", OPERATOR_ARTIFACT)
TRIPLETS = Input("triplets", "build_prm", TRIPLETS_ARTIFACT)
PRM = Input("prm", "train_prm", PRM_ARTIFACT)
RESUME = Input("resume")  # a checkpoint to continue training from; only when given
INIT = Input("init")  # an operator.pt whose weights (and normalizer) a fine-tune starts from; only when given


def data_path(cfg, ctx, split: str = "train", context: str = "training") -> Path:
    """An explicit data.path, else `--input data=URI`, else the (possibly just generated) data of the
    newest matching `generate` run; logged as the run's dataset input (`split`, read for `context`)."""
    path = Path(cfg.data.path).expanduser() if cfg.data.path else ctx.input("data", cfg)
    return ctx.dataset(path, split, context)


def operator_path(cfg, ctx) -> Path:
    """The operator's checkpoint; of an ensemble, member 0's (the one its baseline and PRM anchor use)."""
    return ctx.input("operator", cfg) if "operator" not in ctx.inputs else operator_paths(cfg, ctx)[0]


def operator_paths(cfg, ctx) -> list[Path]:
    """One checkpoint per ensemble member (only the operator's without sampler `ensemble`): the `train`
    runs of this config with seeds seed + i, got or run, or the runs `--input operator=URI0,URI1,...`
    names, member i = URI i. Fine-tuned members must be given so: their init is an input, not part of
    the train key that get-or-run looks up, and one URI would make M identical members."""
    seeds = member_seeds(cfg.seed, cfg.sampling.members if "ensemble" in cfg.sampling.parts else 1)
    if "operator" not in ctx.inputs:
        return [ctx.input("operator", dataclasses.replace(cfg, seed=s)) for s in seeds]
    uris = [u.strip() for u in ctx.inputs["operator"].split(",")]
    if len(uris) != len(seeds):
        what = f"sampler ensemble with sampling.members={len(seeds)}" if len(seeds) > 1 else "one operator"
        raise EnsembleError(f"--input operator: {len(uris)} URI(s) given, {what} needs {len(seeds)}: list one "
                            f"comma-separated URI per member (member i = URI i), or drop --input operator to "
                            f"get or run the members")
    return [ctx.tracker.resolve(u, Path(OPERATOR_ARTIFACT).name) for u in uris]
