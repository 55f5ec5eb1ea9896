"""TTC during training (issue 11): each option against plain one-step training on the same data and
seeds, at the same epochs, at the same wall time and at the same operator forward samples (the plain
control trains extra epochs), then TTC on top of every trained operator.

    python benchmarks/ttc_training.py [--seeds 0 1 2] [--epochs 6] [--n-traj 40] [--cells 64] [--ft-lr 3e-4]
                                      [--model fno|upt]

Prints one row per (option, seed) and two tables. Cost table: approach | training time (x plain) |
forward samples (x plain) | test final-step nRMSE gain vs plain at same epochs / same wall time / same
forward samples | one-step MSE. TTC table: per trained operator, the test final-step nRMSE of the
plain rollout (ttc `baseline`) and the gain in that mean of ARM greedy N=5 without and with the
conservation projection (ttclab.ttc.search, the project's sampler and seed). Gains are (ref - x) / ref, so > 0 is
better; with 6 test ICs and 1-3 seeds, a few percent is noise.
"""

from __future__ import annotations

import argparse
import copy
import math
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from ttclab.data import pdebench
from ttclab.data.datasets import SplitData, channel_stats, make_splits
from ttclab.metrics.rollout import nrmse_per_step
from ttclab.models import make_model
from ttclab.project import load_project
from ttclab.problems import make_problem
from ttclab.rewards import make_reward
from ttclab.training.loop import TrainConfig, evaluate, train
from ttclab.training.ttc_training import FilterConfig, keep_mask, make_scorer, trajectory_scores
from ttclab.ttc.rollout import rollout
from ttclab.ttc.search import search

REPO = Path(__file__).resolve().parents[1]


MODELS = {"fno": ("euler1d.yaml", ["model.width=16", "model.modes=8", "model.layers=3"]),  # project, small sizes
          "upt": ("euler1d_upt.yaml", ["model.dim=16", "model.tokens=8", "model.heads=2", "model.approx_layers=1"])}


def setup(args, folder: Path):
    project, sizes = MODELS[args.model]
    cfg = load_project(REPO / "projects" / project, [f"problem.n_cells={args.cells}", f"data.n_trajectories={args.n_traj}",
                                                     *sizes])
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


@contextmanager
def counting(model):
    """Counts operator forward samples (states through the network) while active: a latent operator's
    every path (forward, sample_next's candidates) goes through encode, any other through forward.
    -> a one-item list holding the count. Instance attribute shadowing the method, removed on exit."""
    name = "encode" if model.latent else "forward"
    inner, count = getattr(model, name), [0]

    def counted(u, *rest, **kw):
        count[0] += u.shape[0]
        return inner(u, *rest, **kw)

    setattr(model, name, counted)
    try:
        yield count
    finally:
        delattr(model, name)


def fit(cfg, data, train_u, tcfg, seed, scorers=None, init=None):
    """-> (model, wall seconds, operator forward samples), validation passes included."""
    torch.manual_seed(seed)
    model = make_model(cfg.model, n_fields=3, ndim=1) if init is None else copy.deepcopy(init)
    start = time.perf_counter()
    with counting(model) as fwd:
        train(model, pairs(data, train_u), pairs(data, data["val"]), tcfg, seed=seed, progress=False, scorers=scorers)
    return model, time.perf_counter() - start, fwd[0]


def ttc_report(model, cfg, problem, data) -> dict:
    """Mean final-step test nRMSE of the plain rollout and of ARM greedy N=5 (without, with projection)."""
    truth, out = data["test"], {}
    for label, name, project in (("baseline", "baseline", False), ("arm", "arm", False), ("arm+proj", "arm", True)):
        reward = make_reward(name, problem=problem, arm=cfg.arm, device="cpu")
        gen = torch.Generator().manual_seed(cfg.sampling.seed)
        res = search(model.eval(), data.normalizer, problem, truth, reward, branching=5, beam=1,
                     sampling_cfg=cfg.sampling, project=project, generator=gen)
        out[label] = float(nrmse_per_step(res.trajectory, truth).mean(0)[-1])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--n-traj", type=int, default=40)
    ap.add_argument("--cells", type=int, default=64)
    ap.add_argument("--model", choices=sorted(MODELS), default="fno", help="operator (small sizes in MODELS)")
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

    def matched(ratios, epochs, init=None, **keys):  # plain (or truth fine-tune) controls at `ratios` x the epochs
        reps = []
        for ratio in ratios:
            m, _, _ = fit(cfg, data, data["train"], TrainConfig(epochs=max(epochs, round(epochs * ratio)), **keys),
                          seed, init=init)
            reps.append(report(m, data))
        return reps

    def row(name, model, t, fwd, ref, rep_time, rep_fwd):
        r = dict(name=name, seed=seed, time=t, fwd=fwd, rep=report(model, data), ref=ref, same_time=rep_time,
                 same_fwd=rep_fwd, ttc=ttc_report(model, cfg, problem, data))
        rows.append(r)
        print(name, "seed", seed, f"time x{t:.2f} fwd x{fwd:.2f}", r["rep"], "ttc", r["ttc"], flush=True)

    fit(cfg, data, data["train"], TrainConfig(epochs=1, **base), 0)  # warm-up: the first fit pays one-off costs
    for seed in args.seeds:
        plain, t_plain, f_plain = fit(cfg, data, data["train"], TrainConfig(epochs=E, **base), seed)
        ref = report(plain, data)
        row("plain", plain, 1.0, 1.0, ref, ref, ref)
        options = {
            "reward weighting (arm, T=1e-2)": dict(loss_weighting="reward", weight_temperature=1e-2),
            "hard sampling (spread, N=8)": dict(sampling="hard", hard_score="spread", n_candidates=8),
        }
        for name, keys in options.items():
            m, t, f = fit(cfg, data, data["train"], TrainConfig(epochs=E, **base, **keys), seed, arm)
            row(name, m, t / t_plain, f / f_plain, ref, *matched((t / t_plain, f / f_plain), E, **base))
        # Offline filtering: roll out the plain operator on the train ICs, keep the better half by ARM, retrain.
        start = time.perf_counter()
        true = encoded(data, data["train"])
        with torch.no_grad(), counting(plain) as f_filter:
            pred = rollout(plain.eval(), true[:, 0], true.shape[1] - 1)
            keep = keep_mask(trajectory_scores(pred, true, arm["arm"], False), FilterConfig(keep_fraction=0.5))
        t_filter = time.perf_counter() - start
        m, t, f = fit(cfg, data, data["train"][keep], TrainConfig(epochs=E, **base), seed)
        t_tot, f_tot = (t_plain + t_filter + t) / t_plain, (f_plain + f_filter[0] + f) / f_plain
        row("filter (arm, keep 0.5) + retrain", m, t_tot, f_tot, ref, *matched((t_tot, f_tot), E, **base))
        # Best-of-N fine-tunes from the plain operator for E/2 epochs; the reference and controls fine-tune on the truth.
        half = max(1, E // 2)
        ft = dict(base, lr=args.ft_lr)
        truth_ft, t_truth, f_truth = fit(cfg, data, data["train"], TrainConfig(epochs=half, **ft), seed, init=plain)
        truth_ref = report(truth_ft, data)
        for reward, scorer in (("oracle", oracle), ("arm", arm)):
            m, t, f = fit(cfg, data, data["train"], TrainConfig(epochs=half, **ft, target="best_of_n",
                                                                target_reward=reward, n_candidates=8), seed, scorer, init=plain)
            row(f"best_of_n ({reward}, N=8) fine-tune", m, (t_plain + t) / (t_plain + t_truth),
                (f_plain + f) / (f_plain + f_truth), truth_ref, *matched((t / t_truth, f / f_truth), half, plain, **ft))

    mean = lambda v: sum(v) / len(v)
    se = lambda v: (math.sqrt(sum((x - mean(v)) ** 2 for x in v) / (len(v) - 1) / len(v)) if len(v) > 1 else float("nan"))
    pm = lambda v: f"{100 * mean(v):+.1f}% +- {100 * se(v):.1f}"
    gain = lambda ref, x: (ref - x) / ref
    names = list(dict.fromkeys(r["name"] for r in rows))
    print("\napproach | training time (x plain) | forward samples (x plain) | final nRMSE gain same-epochs | "
          "same-time | same-forward | one-step MSE (plain -> option)")
    for name in names[1:]:
        rs = [r for r in rows if r["name"] == name]
        fin = lambda r, k: r[k]["final_nrmse"]
        print(f"{name} | x{mean([r['time'] for r in rs]):.2f} | x{mean([r['fwd'] for r in rs]):.1f} | "
              f"{pm([gain(fin(r, 'ref'), fin(r, 'rep')) for r in rs])} | "
              f"{pm([gain(fin(r, 'same_time'), fin(r, 'rep')) for r in rs])} | "
              f"{pm([gain(fin(r, 'same_fwd'), fin(r, 'rep')) for r in rs])} | "
              f"{mean([r['ref']['onestep'] for r in rs]):.2e} -> {mean([r['rep']['onestep'] for r in rs]):.2e}")
    print("\ntrained operator | test final nRMSE (baseline rollout) | gain ARM N=5 | ARM N=5 + projection")
    for name in names:
        rs = [r["ttc"] for r in rows if r["name"] == name]
        print(f"{name} | {mean([t['baseline'] for t in rs]):.4f} | {pm([gain(t['baseline'], t['arm']) for t in rs])} | "
              f"{pm([gain(t['baseline'], t['arm+proj']) for t in rs])}")

if __name__ == "__main__":
    main()
