"""TTC during training (issue 11): each option against plain one-step training on the same data and
seeds, at the same epochs and at the same wall time (the plain control trains extra epochs).

    python benchmarks/ttc_training.py [--seeds 0 1 2] [--epochs 6] [--n-traj 40] [--cells 64] [--ft-lr 3e-4]

Prints one row per (option, seed) and the cost table: approach | training time (x plain) |
test final-step nRMSE gain vs plain (same epochs / same wall time) | one-step MSE. Gains are
(plain - option) / plain, so > 0 is better; with 6 test ICs and 1-3 seeds, a few percent is noise.
"""

from __future__ import annotations

import argparse
import copy
import math
import tempfile
import time
from pathlib import Path

import torch

from ttclab.data import pdebench
from ttclab.data.datasets import SplitData, channel_stats, make_splits
from ttclab.metrics.rollout import nrmse_per_step
from ttclab.models import make_model
from ttclab.project import load_project
from ttclab.problems import make_problem
from ttclab.training.loop import TrainConfig, evaluate, train
from ttclab.training.ttc_training import FilterConfig, keep_mask, make_scorer, trajectory_scores
from ttclab.ttc.rollout import rollout

REPO = Path(__file__).resolve().parents[1]


def setup(args, folder: Path):
    cfg = load_project(REPO / "projects/euler1d.yaml", [f"problem.n_cells={args.cells}", f"data.n_trajectories={args.n_traj}",
                                                        "model.width=16", "model.modes=8", "model.layers=3"])
    problem = make_problem(cfg.problem)
    traj = problem.solve(cfg.data.n_trajectories, cfg.data.seed, progress=False)
    splits = make_splits(cfg.data.n_trajectories, cfg.data)
    mean, std = channel_stats(traj.fields[splits["train"]])
    meta = {f"split_{k}": v for k, v in splits.items()} | {"norm_mean": mean, "norm_std": std}
    path = pdebench.write(folder / "euler1d.h5", problem, traj, meta)
    return cfg, problem, SplitData(path, problem, cfg.data)


def encoded(data, u):
    return data.normalizer.encode(u.flatten(0, 1), u.ndim - 3).view(u.shape)


def pairs(data, u):
    x, y = encoded(data, u[:, :-1]).flatten(0, 1), encoded(data, u[:, 1:]).flatten(0, 1)
    return x, y.unsqueeze(1)


def report(model, data) -> dict:
    test = encoded(data, data["test"])
    pred = data.normalizer.decode(rollout(model.eval(), test[:, 0], test.shape[1] - 1).flatten(0, 1), 1)
    nrmse = nrmse_per_step(pred.view(data["test"].shape), data["test"]).mean(0)
    return {"final_nrmse": float(nrmse[-1]), "onestep": evaluate(model, *pairs(data, data["test"]), 256, "cpu")}


def fit(cfg, data, train_u, tcfg, seed, scorers=None, init=None):
    torch.manual_seed(seed)
    model = make_model(cfg.model, n_fields=3, ndim=1) if init is None else copy.deepcopy(init)
    start = time.perf_counter()
    train(model, pairs(data, train_u), pairs(data, data["val"]), tcfg, seed=seed, progress=False, scorers=scorers)
    return model, time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--n-traj", type=int, default=40)
    ap.add_argument("--cells", type=int, default=64)
    ap.add_argument("--ft-lr", type=float, default=3e-3, help="learning rate of the best_of_n and truth fine-tunes")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        cfg, problem, data = setup(args, Path(tmp))
    norm = data.normalizer
    arm = {"arm": make_scorer("arm", problem, norm)}
    oracle = {"oracle": make_scorer("oracle", problem, norm)}
    E, rows = args.epochs, []
    base = dict(batch_size=64, log_every=0)
    for seed in args.seeds:
        plain, t_plain = fit(cfg, data, data["train"], TrainConfig(epochs=E, **base), seed)
        ref = report(plain, data)
        rows.append(("plain", seed, 1.0, ref, ref))

        def control(seconds):  # plain training for as many epochs as fit in `seconds`
            m, _ = fit(cfg, data, data["train"], TrainConfig(epochs=max(E, round(E * seconds / t_plain)), **base), seed)
            return report(m, data)

        options = {
            "reward weighting (arm, T=1e-2)": dict(loss_weighting="reward", weight_temperature=1e-2),
            "hard sampling (spread, N=8)": dict(sampling="hard", hard_score="spread", n_candidates=8),
        }
        for name, keys in options.items():
            m, t = fit(cfg, data, data["train"], TrainConfig(epochs=E, **base, **keys), seed, arm)
            rows.append((name, seed, t / t_plain, report(m, data), control(t)))
        # Offline filtering: roll out the plain operator on the train ICs, keep the better half by ARM, retrain.
        start = time.perf_counter()
        true = encoded(data, data["train"])
        with torch.no_grad():
            pred = rollout(plain.eval(), true[:, 0], true.shape[1] - 1)
            keep = keep_mask(trajectory_scores(pred, true, arm["arm"], False), FilterConfig(keep_fraction=0.5))
        t_filter = time.perf_counter() - start
        m, t = fit(cfg, data, data["train"][keep], TrainConfig(epochs=E, **base), seed)
        total = t_plain + t_filter + t
        rows.append(("filter (arm, keep 0.5) + retrain", seed, total / t_plain, report(m, data), control(total)))
        # Best-of-N fine-tunes from the plain operator for E/2 epochs; its control fine-tunes on the truth.
        half = max(1, E // 2)
        ft = dict(base, lr=args.ft_lr)
        truth_ft, t_truth = fit(cfg, data, data["train"], TrainConfig(epochs=half, **ft), seed, init=plain)
        for reward, scorer in (("oracle", oracle), ("arm", arm)):
            m, t = fit(cfg, data, data["train"], TrainConfig(epochs=half, **ft, target="best_of_n",
                                                             target_reward=reward, n_candidates=8), seed, scorer, init=plain)
            ctl, _ = fit(cfg, data, data["train"], TrainConfig(epochs=max(half, round(half * t / t_truth)), **ft),
                         seed, init=plain)
            rows.append((f"best_of_n ({reward}, N=8) fine-tune", seed, (t_plain + t) / (t_plain + t_truth),
                         report(m, data), report(ctl, data), report(truth_ft, data)))
        for row in rows[-5:]:
            print(row[0], "seed", seed, f"time x{row[2]:.2f}", row[3], "control", row[4], flush=True)
    print("\napproach | training time (x plain) | final nRMSE gain same-epochs | same-time | one-step MSE (plain -> option)")
    for name in dict.fromkeys(r[0] for r in rows):
        rs = [r for r in rows if r[0] == name]
        plains = [next(p for p in rows if p[0] == "plain" and p[1] == r[1])[3] for r in rs]
        # best_of_n's same-epochs reference is the truth fine-tune of the same length (row[5]).
        same = [(r[5] if len(r) > 5 else p)["final_nrmse"] for r, p in zip(rs, plains)]
        gain_e = [(s - r[3]["final_nrmse"]) / s for s, r in zip(same, rs)]
        gain_t = [(r[4]["final_nrmse"] - r[3]["final_nrmse"]) / r[4]["final_nrmse"] for r in rs]
        mean = lambda v: sum(v) / len(v)
        se = lambda v: (math.sqrt(sum((x - mean(v)) ** 2 for x in v) / (len(v) - 1) / len(v)) if len(v) > 1 else float("nan"))
        print(f"{name} | x{mean([r[2] for r in rs]):.2f} | {100 * mean(gain_e):+.1f}% +- {100 * se(gain_e):.1f} | "
              f"{100 * mean(gain_t):+.1f}% +- {100 * se(gain_t):.1f} | "
              f"{mean([p['onestep'] for p in plains]):.2e} -> {mean([r[3]['onestep'] for r in rs]):.2e}")


if __name__ == "__main__":
    main()
