"""Inputs shared by several stages: the data file and the operator checkpoint of a config."""

from __future__ import annotations

from pathlib import Path

DATA_ARTIFACT = "data"
OPERATOR_ARTIFACT = "model/operator.pt"


def data_path(cfg, ctx) -> Path:
    """An explicit data.path, else `--input data=URI`, else the (possibly just generated) data of the
    newest matching `generate` run."""
    if cfg.data.path:
        return Path(cfg.data.path).expanduser()
    if "data" in ctx.inputs:
        return ctx.tracker.resolve(ctx.inputs["data"])
    run_id = ctx.upstream("generate", cfg)
    return ctx.tracker.artifact_dir(run_id) / DATA_ARTIFACT / f"{cfg.problem.type}.h5"


def operator_path(cfg, ctx) -> Path:
    if "operator" in ctx.inputs:
        return ctx.tracker.resolve(ctx.inputs["operator"])
    run_id = ctx.upstream("train", cfg)
    return ctx.tracker.artifact_dir(run_id) / OPERATOR_ARTIFACT
