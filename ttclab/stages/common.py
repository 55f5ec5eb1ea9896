"""The inputs stages pass to one another: each `Input` names its `--input` name, the stage whose run
holds it and the artifact path there; stages list them in `@stage(inputs=...)`."""

from __future__ import annotations

from pathlib import Path

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
    return ctx.input("operator", cfg)
