"""Stage `filter`: offline rollout filtering (issue 11, option 4).

Roll the operator out deterministically from every train IC, score each trajectory by a reward
(ttc_training.trajectory_scores), keep filter.keep_fraction of them (or those past filter.threshold)
and write the data file again with only the kept train ICs: val and test ICs, coordinates,
attributes and the original train normalization stay, so
`train --input data=runs:/<filter run>/data/<problem>.h5` trains on the kept ICs and is validated and
tested on exactly the ICs of the unfiltered runs. With filter.rounds = R > 1 the stage iterates
train -> filter: round r > 1 trains a new operator (a `train` run with data.path = round r-1's file,
logged as data/round<r-1>/<problem>.h5) and filters all the original train ICs again with it, so every
round keeps the same number of ICs; the last round's file is data/<problem>.h5, as for R = 1.
"""

from __future__ import annotations

import dataclasses
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
    prm = ctx.input("prm", cfg) if cfg.filter.reward == "prm" else None
    op, rounds = operator_path(cfg, ctx), cfg.filter.rounds
    for r in range(1, rounds + 1):
        keep = _filter_round(cfg, ctx, run, problem, path, data, op, prm, r)
        sub = DATA_ARTIFACT if r == rounds else f"{DATA_ARTIFACT}/round{r}"
        with tempfile.TemporaryDirectory(prefix="ttclab-filter-") as tmp:
            run.artifact(_write_kept(path, Path(tmp) / f"{problem.name}.h5", problem, data, keep), sub)
        out = run.artifact_dir() / sub / f"{problem.name}.h5"
        if r < rounds:  # the next round's operator trains on this round's ICs (other inputs as given)
            inputs = {k: v for k, v in ctx.inputs.items() if k not in ("data", "operator")}
            round_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(out)))
            _, trained = dataclasses.replace(ctx, inputs=inputs).run("train", round_cfg,
                                                                     tags={"ttclab.filter_round": str(r + 1)})
            op = trained["checkpoint"]
    return {"path": out}


def _filter_round(cfg, ctx, run, problem, path, data, op, prm, r) -> torch.Tensor:
    """Round r: roll out the operator at `op` from every train IC -> (B,) bool mask of the kept ICs."""
    model, norm, _ = checkpoint.load_operator(op, expect_problem=cfg.problem, device=ctx.device)
    true = norm.encode(data["train"].to(ctx.device).flatten(0, 1), problem.ndim).view(data["train"].shape)
    with torch.no_grad():
        pred = rollout(model, true[:, 0], true.shape[1] - 1)
        scorer = None if cfg.filter.reward == "oracle" else make_scorer(cfg.filter.reward, problem, norm, prm,
                                                                       ctx.device)
        scores = trajectory_scores(pred, true, scorer, oracle=scorer is None).cpu()
    keep = keep_mask(scores, cfg.filter)
    if not keep.any():
        raise ConfigError(f"filter.threshold={cfg.filter.threshold} keeps none of {len(scores)} train ICs "
                          f"(scores {float(scores.min()):.3g}..{float(scores.max()):.3g}); move it or use keep_fraction")
    run.log({"filter/n_train": len(scores), "filter/n_kept": int(keep.sum()),
             "filter/kept_fraction": float(keep.float().mean()),
             "filter/score_kept_mean": float(scores[keep].mean()), "filter/score_all_mean": float(scores.mean()),
             "filter/kept_true_mse": float((pred - true)[keep.to(pred.device)].pow(2).mean()),
             "filter/all_true_mse": float((pred - true).pow(2).mean())}, step=r)
    if ctx.progress:
        print(f"[ttclab] round {r}: kept {int(keep.sum())} of {len(scores)} train ICs by {cfg.filter.reward} "
              f"({cfg.filter.keep}); val/test ICs unchanged")
    return keep


def _write_kept(path, out, problem, data, keep) -> Path:
    """The data file at `path` again with only the kept train ICs; val/test ICs and the train normalization stay."""
    kept = {"train": data.indices["train"][keep.numpy()], "val": data.indices["val"], "test": data.indices["test"]}
    order = np.sort(np.concatenate(list(kept.values())))  # file indices, increasing (h5py reads them in order)
    meta = {f"split_{s}": np.searchsorted(order, kept[s]) for s in SPLITS}
    meta |= {"norm_mean": data.normalizer.mean.numpy(), "norm_std": data.normalizer.std.numpy()}
    return pdebench.write_subset(path, out, problem, order, meta)
