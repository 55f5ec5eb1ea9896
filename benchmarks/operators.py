"""FNO vs UPT vs UPT + inverse losses on the same euler1d data and test ICs (issue 10's table).

    TTCLAB_HOME=/tmp/ops python benchmarks/operators.py [--seeds 0 1 2] [--inverse ENC DEC WARMUP]
                                                         [--set key=value ...]

Trains (or finds, through the store's get-or-run) each operator with the `train` stage on the one
`generate` run that projects/euler1d.yaml and projects/euler1d_upt.yaml share, then rolls every
checkpoint out deterministically on the test split, physical (the operator's forward every step) and,
for UPT, latent (encoded once; ttc/rollout.py). Prints one row per (operator, seed, mode) and a table
of mean +- s.e. over seeds: params, train time, test one-step MSE (teacher-forced, normalized units),
final-step MSE and nRMSE, relative mass and energy drift at the final step. UPT + inverse uses
train.loss=upt_inverse with the given lambdas and warm-up (default: the project's); UPT plain the
forward loss alone (train.loss=unrolled_mse). `--set` applies to every run (e.g. train.epochs=5).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from ttclab.data.datasets import SplitData
from ttclab.metrics.rollout import conservation_drift, mse_per_step, nrmse_per_step
from ttclab.models.checkpoint import load_operator
from ttclab.project import load_project
from ttclab.stages import Context, configure_process
from ttclab.stages.common import DATA, OPERATOR_ARTIFACT
from ttclab.tracking.store import Tracker
from ttclab.tracking.uris import default_tracking_uri
from ttclab.ttc.rollout import rollout

REPO = Path(__file__).resolve().parents[1]


def variants(args) -> dict[str, tuple[str, list[str]]]:
    inverse = [] if args.inverse is None else [f"train.lambda_inv_enc={args.inverse[0]}",
                                              f"train.lambda_inv_dec={args.inverse[1]}",
                                              f"train.inverse_warmup_epochs={int(args.inverse[2])}"]
    return {"fno": ("euler1d.yaml", []),
            "upt": ("euler1d_upt.yaml", ["train.loss=unrolled_mse"]),
            "upt+inverse": ("euler1d_upt.yaml", ["train.loss=upt_inverse", *inverse])}


@torch.no_grad()
def evaluate(ckpt: Path, data_file: Path, cfg, ctx, mode: str) -> dict[str, float]:
    model, norm, problem = load_operator(ckpt, cfg.problem, ctx.device)
    data = SplitData(data_file, problem, cfg.data)
    true = data["test"].to(ctx.device)
    enc = norm.encode(true.flatten(0, 1), 1).view(true.shape)
    one_step = float(((model(enc[:, :-1].flatten(0, 1)) - enc[:, 1:].flatten(0, 1)) ** 2).mean())
    pred = norm.decode(rollout(model, enc[:, 0], true.shape[1] - 1, mode=mode).flatten(0, 1), 1).view(true.shape)
    drift = conservation_drift(problem, pred)
    return {"one_step_mse": one_step, "final_mse": float(mse_per_step(pred, true).mean(0)[-1]),
            "final_nrmse": float(nrmse_per_step(pred, true).mean(0)[-1]),
            "drift_mass": float(drift["mass"][:, -1].mean()), "drift_energy": float(drift["energy"][:, -1].mean())}


def mean_se(values: list[float]) -> str:
    m = statistics.fmean(values)
    se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")
    return f"{m:.3e} +- {se:.1e}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--inverse", type=float, nargs=3, metavar=("ENC", "DEC", "WARMUP"))
    ap.add_argument("--set", dest="sets", action="append", default=[])
    args = ap.parse_args()
    configure_process()
    ctx = Context(Tracker(default_tracking_uri()), progress=False)
    rows: dict[tuple[str, str], list[dict]] = {}
    for name, (project, sets) in variants(args).items():
        for seed in args.seeds:
            cfg = load_project(REPO / "projects" / project, [*sets, *args.sets, f"seed={seed}"])
            run_id = ctx.upstream("train", cfg)  # get-or-run, as every stage's inputs
            trained = ctx.tracker.client.get_run(run_id).data.metrics
            ckpt = ctx.tracker.artifact_dir(run_id) / OPERATOR_ARTIFACT
            data_file = ctx.tracker.artifact_dir(ctx.upstream("generate", cfg)) / DATA.artifact(cfg)
            for mode in ("physical", "latent") if name != "fno" else ("physical",):
                row = {"params": trained["model/n_params"], "train_s": trained.get("train/wall_s", float("nan")),
                       **evaluate(ckpt, data_file, cfg, ctx, mode)}
                rows.setdefault((name, mode), []).append(row)
                print(f"{name:12s} s{seed} {mode:8s} " + " ".join(f"{k}={v:.4g}" for k, v in row.items()), flush=True)
    keys = ["params", "train_s", "one_step_mse", "final_mse", "final_nrmse", "drift_mass", "drift_energy"]
    print("\n| operator | rollout | " + " | ".join(keys) + " |\n|" + "---|" * (len(keys) + 2))
    for (name, mode), rs in rows.items():
        print(f"| {name} | {mode} | " + " | ".join(mean_se([r[k] for r in rs]) for k in keys) + " |")


if __name__ == "__main__":
    main()
