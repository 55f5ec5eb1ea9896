"""Stage `train`: fit the one-step operator on the train split, keep the best checkpoint on val."""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import torch

from ..data.datasets import SplitData
from ..metrics.rollout import default_horizons, mse_per_step, nrmse_per_step
from ..models import make_model
from ..problems import make_problem
from ..models import checkpoint
from ..training.loop import train as train_loop
from ..ttc.rollout import rollout
from . import stage
from ..errors import UserError
from ..training.loop import evaluate
from ..training.ttc_training import make_scorer
from . import Input
from .common import DATA, INIT, OPERATOR_ARTIFACT, PRM_ARTIFACT, RESUME, data_path

# A PRM for train.weight_reward / hard_score / target_reward = prm, only when given: train_prm
# depends on a trained operator, so train cannot get-or-run one.
TRAIN_PRM = Input("prm", path=PRM_ARTIFACT).when(lambda cfg: "prm" in cfg.train.rewards())


@torch.no_grad()
def rollout_report(model, data: SplitData, split: str, device) -> dict[str, float]:
    """Deterministic rollout from t=0 over the whole horizon of a split: MSE / nRMSE at horizons,
    `{split}/rollout_*` physical and, for operators that can (ttc/rollout.py), `{split}/latent/rollout_*`."""
    norm = data.normalizer.to(device)
    true = data[split].to(device)
    ndim = true.ndim - 3
    out = {}
    for mode, prefix in (("physical", split), ("latent", f"{split}/latent")):
        if mode == "latent" and not getattr(model, "absolute_decode", False):
            continue
        pred = norm.decode(rollout(model.eval(), norm.encode(true[:, 0], ndim), true.shape[1] - 1, mode=mode), ndim)
        mse, nrmse = mse_per_step(pred, true).mean(0), nrmse_per_step(pred, true).mean(0)
        for h in default_horizons(true.shape[1] - 1):
            out[f"{prefix}/rollout_mse/h{h}"] = float(mse[h])
            out[f"{prefix}/rollout_nrmse/h{h}"] = float(nrmse[h])
    return out


@stage("train", key=("model", "train", "seed"), inputs=(DATA, RESUME, INIT, TRAIN_PRM),
       run_name=lambda cfg: f"train · {cfg.model.type} · s{cfg.seed}", registers="operator", system_metrics=True)
def train(cfg, ctx, run):
    """Train the operator; log losses, rollout errors and the checkpoint (model/operator.pt)."""
    problem = make_problem(cfg.problem)
    data = SplitData(data_path(cfg, ctx), problem, cfg.data)
    torch.manual_seed(cfg.seed)
    model = make_model(cfg.model, n_fields=problem.n_fields, ndim=problem.ndim)
    n_params = sum(p.numel() * (2 if p.is_complex() else 1) for p in model.parameters())
    run.log({"model/n_params": n_params})
    resume = ctx.input("resume", cfg)  # a last.pt path; the training loop reads and checks it
    init = ctx.input("init", cfg)
    if init is not None:
        if resume is not None:
            raise InitError("--input init and --input resume: give one (resume continues a run, init starts a "
                            "fine-tune from another run's operator.pt)")
        start_from(model, data, init, cfg)
    elif cfg.train.target == "best_of_n":
        raise InitError("train.target=best_of_n fine-tunes a trained operator: add --input "
                        "init=runs:/<train run>/model/operator.pt")
    save_kw = dict(problem_cfg=cfg.to_dict()["problem"], model_cfg=cfg.to_dict()["model"], normalizer=data.normalizer)
    with tempfile.TemporaryDirectory(prefix="ttclab-train-") as tmp:
        return _fit(cfg, ctx, run, data, model, resume, save_kw, Path(tmp), fine_tune=init is not None)


class InitError(UserError):
    """--input init that cannot start this training."""


def start_from(model, data: SplitData, path, cfg) -> None:
    """Fine-tune start: the pretrained weights and the pretrained normalizer (the weights mean
    something only in the units they were trained in, so the target family is encoded with the
    source family's statistics); the optimizer and schedule start fresh in the training loop."""
    pretrained, normalizer, _ = checkpoint.load_operator(path, expect_problem=cfg.problem)
    bad = checkpoint.weights_mismatch(model, pretrained.state_dict())
    if bad:
        raise checkpoint.CheckpointError(f"{path}: init weights do not fit this project's model (first mismatch: "
                                         f"{bad}); set the model section the operator was trained with")
    model.load_state_dict(pretrained.state_dict())
    data.normalizer = normalizer.to("cpu")


def scorers(cfg, ctx, data: SplitData) -> dict:
    """One Scorer per reward the train section's TTC options use, in the normalizer's units."""
    names = cfg.train.rewards()
    prm = ctx.input("prm", cfg) if "prm" in names else None
    if "prm" in names and prm is None:
        raise InitError("train: a prm reward needs --input prm=runs:/<train_prm run>/model/prm.pt (train cannot "
                        "get-or-run a PRM: train_prm depends on a trained operator)")
    norm = copy.deepcopy(data.normalizer).to(ctx.device)
    return {name: make_scorer(name, make_problem(cfg.problem), norm, prm, ctx.device) for name in names}


def _fit(cfg, ctx, run, data, model, resume, save_kw, work: Path, fine_tune: bool):
    ndim = data["train"].ndim - 3

    def normalized_pairs(split):
        x, y = data.pairs(split, cfg.train.unroll)
        return data.normalizer.encode(x, ndim), data.normalizer.encode(y.flatten(0, 1), ndim).view(y.shape)

    def on_epoch(epoch, val, state):
        # Resumable state in the run after every epoch (replaced atomically), so after any crash,
        # kill -9 included, `--input resume=runs:/<id>/model/last.pt` loses at most one epoch.
        checkpoint.save(work / "last.pt", model=model, **save_kw, **{k: v for k, v in state.items() if k != "state_dict"})
        run.artifact(work / "last.pt", "model")
        run.report("val/loss", val, epoch)
        if cfg.train.target == "best_of_n":  # reward hacking shows here first: the true rollout error
            run.log(rollout_report(model, data, "val", ctx.device), state["step"])

    if fine_tune:
        # The loss the fine-tune starts from: with the source's data it is the source run's best val loss.
        run.log({"init/val_loss": evaluate(model.to(ctx.device), *normalized_pairs("val"), cfg.train.batch_size,
                                           ctx.device, cfg.train)}, 0)
    start = time.perf_counter()
    state = train_loop(model, normalized_pairs("train"), normalized_pairs("val"), cfg.train,
                       device=ctx.device, seed=cfg.seed, log=run.log, on_epoch=on_epoch,
                       resume=resume, progress=ctx.progress, scorers=scorers(cfg, ctx, data))
    run.log({"train/wall_s": time.perf_counter() - start}, state["step"])
    model.load_state_dict(state["best_state"])
    path = checkpoint.save(work / Path(OPERATOR_ARTIFACT).name, model=model, **save_kw, best_val=state["best_val"])
    run.artifact(path, str(Path(OPERATOR_ARTIFACT).parent))
    report = rollout_report(model.to(ctx.device), data, "val", ctx.device)
    run.log({"val/best_loss": state["best_val"], **report}, state["step"])
    if ctx.progress:
        final = max(int(k.rsplit("h", 1)[1]) for k in report if "rollout_mse" in k)
        print(f"[ttclab] best val one-step loss {state['best_val']:.3e}; val rollout nRMSE "
              f"h1 {report['val/rollout_nrmse/h1']:.3e}, h{final} {report[f'val/rollout_nrmse/h{final}']:.3e}")
    return {"checkpoint": run.artifact_dir() / OPERATOR_ARTIFACT, **report}
