"""Stage `filter`: offline rollout filtering (issue 11, option 4).

Roll the operator out deterministically from every train IC, score each trajectory by a reward
(ttc_training.trajectory_scores), keep filter.keep_fraction of them (or those past filter.threshold)
and write the data file again with only the kept train ICs: val and test ICs, coordinates,
attributes and the original train normalization stay, so
`train --input data=runs:/<filter run>/data/<problem>.h5` trains on the kept ICs and is validated and
tested on exactly the ICs of the unfiltered runs. One round; train -> filter -> retrain loops are
repeated commands (filter.rounds is not built).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from ..config import ConfigError
from ..data import pdebench
from ..data.datasets import SPLITS, SplitData
from ..models import checkpoint
from ..problems import make_problem
from ..training.ttc_training import keep_mask, make_scorer, trajectory_scores
from ..ttc.rollout import rollout
from . import stage
from .common import DATA, DATA_ARTIFACT, OPERATOR, PRM, data_path, operator_path


@stage("filter", key=("filter",), inputs=(DATA, OPERATOR, PRM.when(lambda cfg: cfg.filter.reward == "prm")),
       run_name=lambda cfg: f"filter · {cfg.filter.reward} · {cfg.filter.keep}")
def filter_data(cfg, ctx, run):
    """Keep the train ICs whose operator rollouts score best by filter.reward; log the filtered data file."""
    problem = make_problem(cfg.problem)
    path = data_path(cfg, ctx)
    data = SplitData(path, problem, cfg.data)
    model, norm, _ = checkpoint.load_operator(operator_path(cfg, ctx), expect_problem=cfg.problem, device=ctx.device)
    ndim = problem.ndim
    true = norm.encode(data["train"].to(ctx.device).flatten(0, 1), ndim).view(data["train"].shape)
    with torch.no_grad():
        pred = rollout(model, true[:, 0], true.shape[1] - 1)
        prm = ctx.input("prm", cfg) if cfg.filter.reward == "prm" else None
        scorer = None if cfg.filter.reward == "oracle" else make_scorer(cfg.filter.reward, problem, norm, prm,
                                                                       ctx.device)
        scores = trajectory_scores(pred, true, scorer, oracle=scorer is None).cpu()
    keep = keep_mask(scores, cfg.filter)
    if not keep.any():
        raise ConfigError(f"filter.threshold={cfg.filter.threshold} keeps none of {len(scores)} train ICs "
                          f"(scores {float(scores.min()):.3g}..{float(scores.max()):.3g}); move it or use keep_fraction")
    kept = {"train": data.indices["train"][keep.numpy()], "val": data.indices["val"], "test": data.indices["test"]}
    order = np.sort(np.concatenate(list(kept.values())))  # file indices, increasing (h5py reads them in order)
    meta = {f"split_{s}": np.searchsorted(order, kept[s]) for s in SPLITS}
    meta |= {"norm_mean": data.normalizer.mean.numpy(), "norm_std": data.normalizer.std.numpy()}
    run.log({"filter/n_train": len(scores), "filter/n_kept": int(keep.sum()),
             "filter/kept_fraction": float(keep.float().mean()),
             "filter/score_kept_mean": float(scores[keep].mean()), "filter/score_all_mean": float(scores.mean()),
             "filter/kept_true_mse": float((pred - true)[keep.to(pred.device)].pow(2).mean()),
             "filter/all_true_mse": float((pred - true).pow(2).mean())})
    with tempfile.TemporaryDirectory(prefix="ttclab-filter-") as tmp:
        out = pdebench.write_subset(path, Path(tmp) / f"{problem.name}.h5", problem, order, meta)
        run.artifact(out, DATA_ARTIFACT)
    if ctx.progress:
        print(f"[ttclab] kept {int(keep.sum())} of {len(scores)} train ICs by {cfg.filter.reward} "
              f"({cfg.filter.keep}); val/test ICs unchanged")
    return {"path": run.artifact_dir() / DATA_ARTIFACT / f"{problem.name}.h5"}
