"""Stages `trc_data` (control problems + teacher solutions) and `trc` (train and evaluate the tiny
recursive controller, BC or process supervision).

`trc` reuses the newest `trc_data` run of the same problem config (get-or-run), so the teacher is
solved and the data set logged once, however many controllers and sweep trials use it.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..config import ConfigError, to_dict
from ..data.pdebench import DataError
from ..metrics.control import cost_gap_pct, outcome_summary, refinement
from ..models import checkpoint, make_model
from ..problems import make_problem
from ..problems.control import SPLITS, ControlProblem
from ..tracking.trc_figures import refinement_figure, trajectory_figure
from ..training.losses import iterate_costs
from ..training.trc import fit, predict, save_controller, with_teacher_cost
from ..training.trc_test_time import halting_metrics, test_time_metrics
from . import Input, stage

DATA_FORMAT = "ttclab.control-data/1"
CHECKPOINT = "model/trc.pt"
N_EXAMPLES = 6  # problems drawn in the figures
TRC_DATA = Input("data", "trc_data", "data/{problem}.pt")


def control_problem(cfg) -> ControlProblem:
    problem = make_problem(cfg.problem)
    if not isinstance(problem, ControlProblem):
        raise ConfigError(f"problem.type {cfg.problem.type!r} is not a control problem; "
                          "use double_integrator or vanderpol")
    return problem


def load_data(path: Path, cfg) -> dict:
    blob = checkpoint.read(path, DATA_FORMAT, "make one with `ttclab trc_data`", kind="control data ",
                           error=DataError)
    if blob["problem"] != to_dict(cfg.problem):
        raise DataError(f"{path}: data was generated for another problem config; drop --input data= to regenerate")
    return blob


@stage("trc_data", key=("problem",), run_name=lambda cfg: f"trc_data · {cfg.problem.type}")
def trc_data(cfg, ctx, run):
    """Draw the control problems' train/val/test splits and solve them with the teacher."""
    problem = control_problem(cfg)
    start = time.perf_counter()
    data, stats = problem.make_dataset()
    seconds = time.perf_counter() - start
    metrics = {"data/teacher_s": seconds, **{f"trc/teacher/{k}": v for k, v in stats.items()}}
    for split in SPLITS:
        ev = problem.evaluate(data[split]["x0"], data[split]["target"], data[split]["controls"])
        metrics.update({f"trc/teacher/{split}/{k}": v for k, v in outcome_summary(ev).items()})
        metrics[f"data/n_{split}"] = len(data[split]["x0"])
    run.log(metrics)
    with tempfile.TemporaryDirectory(prefix="ttclab-trc-") as tmp:
        path = Path(tmp) / f"{problem.name}.pt"
        torch.save({"format": DATA_FORMAT, "problem": to_dict(cfg.problem), "stats": stats, **data}, path)
        run.artifact(path, "data")
    if ctx.progress:
        print(f"[ttclab] {problem.name}: solved {sum(len(d['x0']) for d in data.values())} problems in {seconds:.1f}s; "
              f"teacher test success {metrics['trc/teacher/test/success_rate']:.1%}, "
              f"cost {metrics['trc/teacher/test/cost_mean']:.4g}")
    return {"path": run.artifact_dir() / "data" / f"{problem.name}.pt"}


@stage("trc", key=("model", "trc", "seed"), inputs=(TRC_DATA,),
       run_name=lambda cfg: f"trc · {cfg.problem.type} · s{cfg.seed}", registers="trc", system_metrics=True)
def trc(cfg, ctx, run):
    """Train the tiny recursive controller (BC, or process supervision when trc.process_weight > 0)."""
    problem = control_problem(cfg)
    if cfg.model.type != "trc":
        raise ConfigError(f"model.type {cfg.model.type!r}: the trc stage trains model.type trc")
    if cfg.model.halting == "act" and cfg.trc.halt_weight == 0:
        raise ConfigError("model.halting=act needs trc.halt_weight > 0 (the halting head is trained by it)")
    blob = load_data(ctx.input("data", cfg), cfg)
    data = with_teacher_cost(problem, {s: blob[s] for s in SPLITS})
    torch.manual_seed(cfg.seed)
    model = make_model(cfg.model, **problem.dims)
    run.tags({"ttclab.method": cfg.trc.method, "ttclab.split": cfg.trc.eval_split})
    run.log({"model/n_params": sum(p.numel() for p in model.parameters())})

    def on_epoch(epoch, val, state):
        run.report("val/loss", val["val/loss"], epoch)
        run.report("val/trc/success_rate", val["val/success_rate"], epoch)  # what process_weight sweeps prune on

    state = fit(model, problem, data, cfg.trc, device=ctx.device, seed=cfg.seed, log=run.log, on_epoch=on_epoch,
                progress=ctx.progress)  # leaves the best weights in model
    with tempfile.TemporaryDirectory(prefix="ttclab-trc-") as tmp:
        path = save_controller(Path(tmp) / Path(CHECKPOINT).name, model, cfg.problem, cfg.model,
                               best_val=state["best_val"], epoch=state["epoch"])
        run.artifact(path, str(Path(CHECKPOINT).parent))
    results = evaluate(problem, model, data[cfg.trc.eval_split], blob["stats"], ctx.device, cfg.trc.method)
    if cfg.trc.test_time != "none":
        results["metrics"] |= test_time_metrics(model, problem, data[cfg.trc.eval_split], cfg.trc, cfg.seed)
    if cfg.model.halting == "act":
        results["metrics"] |= halting_metrics(model, problem, data[cfg.trc.eval_split])
    run.log({**results["metrics"], "val/best_loss": state["best_val"]}, state["step"])
    for k, row in enumerate(results["per_iteration"]):
        run.log(row, k)
    for name, html in results["figures"].items():
        run.text(html, f"figures/{name}.html")
    run.text(results["csv"], "per_problem.csv")
    m = results["metrics"]
    if ctx.progress:
        print(f"[ttclab] trc {cfg.trc.method} on {cfg.trc.eval_split}: success {m['trc/success_rate']:.1%} "
              f"(teacher {m['trc/teacher/success_rate']:.1%}), final error mean {m['trc/final_error_mean']:.3g}, "
              f"cost gap {m['trc/cost_gap_pct']:+.1f}%, monotonic {m['trc/monotonic_frac']:.1%}")
        if "trc/halting/adaptive/cycles" in m:
            print(f"[ttclab] halting: success {m['trc/halting/adaptive/success_rate']:.1%}, cost gap "
                  f"{m['trc/halting/adaptive/cost_gap_pct']:+.1f}%, {m['trc/halting/adaptive/cycles']:.2f} of "
                  f"{m['trc/halting/fixed/cycles']:.0f} cycles ({m['trc/halting/compute_saved_pct']:.0f}% saved)")
    return {**m, "checkpoint": run.artifact_dir() / CHECKPOINT}


def evaluate(problem, model, split: dict, teacher_stats: dict, device, method: str) -> dict:
    """Controller vs teacher on one split: summary metrics, per-iteration series, figures, CSV."""
    x0, target, teacher = split["x0"], split["target"], split["controls"]
    iterates = [u.double() for u in predict(model, split, device)]
    with torch.no_grad():
        costs = iterate_costs(problem, x0, target, iterates)  # (B, K+1)
        ev = problem.evaluate(x0, target, iterates[-1])
        tev = problem.evaluate(x0, target, teacher)
    ref = refinement(costs, torch.stack(iterates), teacher)
    metrics = {f"trc/{k}": v for k, v in outcome_summary(ev).items()}
    metrics |= {f"trc/teacher/{k}": v for k, v in {**outcome_summary(tev), **teacher_stats}.items()}
    metrics |= {
        "trc/cost_gap_pct": cost_gap_pct(ev["cost"], tev["cost"]),
        "trc/monotonic_frac": float(ref["monotonic"].double().mean()),
        "trc/total_improvement_mean": float(ref["total_improvement"].mean()),
        "trc/first_guess_cost_mean": float(ref["cost_mean"][0]),
        "trc/control_mse": float(ref["control_mse"][-1]),
    }
    per_iteration = [{"trc/refine/cost_mean": float(ref["cost_mean"][k]),
                      "trc/refine/control_mse": float(ref["control_mse"][k]),
                      **({"trc/refine/improvement": float(ref["improvement"][k - 1])} if k else {})}
                     for k in range(costs.shape[1])]
    ex = slice(0, N_EXAMPLES)
    with torch.no_grad():
        model_traj = problem.rollout(x0[ex], iterates[-1][ex]).numpy()
        teacher_traj = problem.rollout(x0[ex], teacher[ex]).numpy()
    title = f"{problem.name}, {method}"
    figures = {
        "refinement": refinement_figure(ref["cost_mean"].numpy(), ref["improvement"].numpy(),
                                        ref["control_mse"].numpy(), ref["total_improvement"].numpy(),
                                        costs[:20].numpy(), title),
        "trajectories": trajectory_figure(problem.cfg.dt, model_traj, teacher_traj, iterates[-1][ex].numpy(),
                                          teacher[ex].numpy(), target[ex].numpy(), title),
    }
    table = np.column_stack([ev["final_error"], ev["cost"], ev["success"], tev["final_error"], tev["cost"],
                             costs.numpy(), ref["monotonic"].numpy()])
    header = ["final_error", "cost", "success", "teacher_final_error", "teacher_cost",
              *[f"cost_iter{k}" for k in range(costs.shape[1])], "monotonic"]
    rows = [",".join(header)] + [",".join(f"{v:.6g}" for v in row) for row in table]
    return {"metrics": metrics, "per_iteration": per_iteration, "figures": figures, "csv": "\n".join(rows) + "\n"}
