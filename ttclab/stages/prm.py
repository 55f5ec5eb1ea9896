"""Stages `build_prm` (ranked candidates from the stochastic operator) and `train_prm` (the PRM).

build_prm: for a seeded fraction of the *train* ICs and every `stride`-th step of each trajectory,
take a state (by default the operator's own deterministic rollout state, carrying the accumulated
error TTC will meet; `triplets.states: truth` takes the data snapshot), draw K candidates of the
next state (a chunk of states x K candidates in one batched pass), rank them by their true MSE to
the next snapshot and keep (state, best, median, worst) plus all K candidates, their MSEs and the
deterministic prediction, so train_prm can draw sets of any size and measure rank correlation over
all K. With `sampling.sampler: ensemble[+noise]` the K candidates are the members' (K / M each), the
same candidates the PRM meets in `ttc`.
train_prm: hold out a fraction of those ICs, train the PRM with the triplet margin loss, and report
held-out ranking quality: prm/triplet_acc, prm/spearman, prm/ece, a reliability plot.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..data import pdebench
from ..data.datasets import Normalizer, SplitData
from ..metrics.prm import calibration, ranking_by_step, ranking_report, triplet_accuracy
from ..models.prm import PRM
from ..problems import make_problem
from ..rewards.prm import save_prm
from ..sampling import candidates
from ..sampling.ensemble import Ensemble, EnsembleError
from ..models import checkpoint
from ..training.triplet import gather_candidates, draw_sets, horizon_errors, rank_triplet, score_all
from ..training.triplet import train as train_loop
from ..ttc.rollout import rollout
from . import stage
from .common import (CALIBRATION_ARTIFACT, DATA, OPERATOR, PRM_ARTIFACT, TRIPLETS, TRIPLETS_ARTIFACT, data_path,
                     operator_path)
from .ttc import _operators as ttc_operators


def diversity(mse: torch.Tensor, det_mse: torch.Tensor, ns: tuple[int, ...]) -> dict[str, float]:
    """How much room the candidates leave a selector. mse (S, K), det_mse (S,); ns = TTC branchings.
    spread: mean over states of std_k / mean_k of the candidate MSE (relative spread);
    oracle_gap: (mean_k - min_k) / mean_k, what a perfect pick gains over an average pick;
    oracle_vs_det_n{n}: (mean det - mean over states of the min of the first n) / mean det, the
    one-step headroom of a perfect pick among n candidates over the deterministic prediction;
    random_vs_det: the same for an arbitrary pick (negative = worse than deterministic)."""
    mean = mse.mean(1)
    det = det_mse.mean()
    out = {
        "triplets/mse_mean": float(mean.mean()),
        "triplets/det_mse": float(det),
        "triplets/spread": float((mse.std(1) / mean).mean()),
        "triplets/oracle_gap": float(((mean - mse.min(1).values) / mean).mean()),
        "triplets/random_vs_det": float((det - mse[:, 0].mean()) / det),
    }
    for n in ns:
        out[f"triplets/oracle_vs_det_n{n}"] = float((det - mse[:, :n].min(1).values.mean()) / det)
    return out


def horizon_labels(model, norm, cands, traj, ic_of, t_of, tc, device) -> tuple[torch.Tensor, float]:
    """(S, K) look-ahead labels (training.triplet.horizon_errors) over chunks of states, and the seconds
    it took: each candidate continued tc.horizon deterministic steps, compared with the data there."""
    ndim, last = traj.ndim - 3, traj.shape[1] - 1
    ahead = t_of.unsqueeze(1) + 1 + torch.arange(tc.horizon + 1)  # (S, H+1) frames t+1..t+1+H
    valid = ahead <= last  # near the end of a trajectory fewer steps remain

    def step(u):
        return norm.decode(model(norm.encode(u.to(device), ndim)), ndim)

    start, out = time.perf_counter(), []
    for i in range(0, len(cands), tc.batch_size):
        sl = slice(i, i + tc.batch_size)
        future = traj[ic_of[sl].unsqueeze(1), ahead[sl].clamp(max=last)].to(device)
        out.append(horizon_errors(step, cands[sl].to(device), future, valid[sl].to(device), tc.label_reduce).cpu())
    return torch.cat(out), time.perf_counter() - start


@stage("build_prm", key=("sampling", "triplets"), inputs=(DATA, OPERATOR),
       run_name=lambda cfg: f"build_prm · k{cfg.triplets.k} · {cfg.sampling.sampler}")
def build_prm(cfg, ctx, run):
    """Rank K stochastic candidates per state on a fraction of the train ICs; log prm/triplets.h5."""
    tc = cfg.triplets
    problem = make_problem(cfg.problem)
    data = SplitData(data_path(cfg, ctx), problem, cfg.data)
    # sampler `ensemble`: the candidates come from the M members (the ttc stage's operators, seeds
    # seed + i); states, anchor and look-ahead use member 0, as the search's deterministic step does.
    loaded = [checkpoint.load_operator(p, cfg.problem, ctx.device) for p in ttc_operators(cfg, ctx)]
    model, norm, _ = loaded[0]
    sampler = Ensemble([m for m, _, _ in loaded]) if len(loaded) > 1 else model
    if len(loaded) > 1 and tc.k % len(loaded):
        raise EnsembleError(f"triplets.k={tc.k} is not a multiple of sampling.members={len(loaded)}: each member "
                          f"proposes k / M candidates; set triplets.k to {len(loaded) * max(1, tc.k // len(loaded))}")
    ndim = problem.ndim
    traj = data["train"]
    n_ic = max(2, round(tc.fraction * len(traj)))
    ics = torch.randperm(len(traj), generator=torch.Generator().manual_seed(tc.seed))[:n_ic].sort().values
    steps = torch.arange(0, traj.shape[1] - 1, tc.stride)
    # Every (IC, step) pair is one state; its truth is the next snapshot.
    ic_of = ics.repeat_interleave(len(steps))
    t_of = steps.repeat(n_ic)
    kinds = ("truth", "rollout") if tc.states == "mixed" else (tc.states,)
    parts = []
    for kind in kinds:
        if kind == "truth":
            parts.append(traj[ic_of, t_of])
        else:
            # The states TTC actually meets: the operator's own deterministic rollout from each IC, with
            # its accumulated error; candidates are still ranked against the true next snapshot.
            with torch.no_grad():
                pred = rollout(model, norm.encode(traj[ics, 0].to(ctx.device), ndim), traj.shape[1] - 2)
                pred = norm.decode(pred.flatten(0, 1), ndim).view(pred.shape).cpu()
            parts.append(pred[torch.arange(n_ic).repeat_interleave(len(steps)), t_of])
    # mixed: both kinds of every (IC, step), rollout states as met at test time, truth states with
    # cleaner labels; `from_rollout` says which is which (the held-out split is by IC, so both sides agree).
    states = torch.cat(parts)
    from_rollout = torch.cat([torch.full((len(p),), kind == "rollout") for kind, p in zip(kinds, parts)])
    ic_of, t_of = ic_of.repeat(len(kinds)), t_of.repeat(len(kinds))
    truth = traj[ic_of, t_of + 1]
    gen = torch.Generator(device=ctx.device).manual_seed(tc.seed)
    start = time.perf_counter()
    cands, mse, det, det_mse = [], [], [], []
    with torch.no_grad():
        for i in range(0, len(states), tc.batch_size):
            s = norm.encode(states[i : i + tc.batch_size].to(ctx.device), ndim)
            y = truth[i : i + tc.batch_size].to(ctx.device)
            c = candidates(sampler, s, tc.k, cfg.sampling, gen)
            c = norm.decode(c.flatten(0, 1), ndim).view(c.shape)
            cands.append(c.cpu())
            mse.append(((c - y.unsqueeze(1)) ** 2).flatten(2).mean(2).cpu())
            d = norm.decode(model(s), ndim)
            det.append(d.cpu())
            det_mse.append(((d - y) ** 2).flatten(1).mean(1).cpu())
    cands, mse, det, det_mse = torch.cat(cands), torch.cat(mse), torch.cat(det), torch.cat(det_mse)
    seconds = time.perf_counter() - start
    next_mse, label_seconds = mse, 0.0
    if tc.label == "horizon":
        mse, label_seconds = horizon_labels(model, norm, cands, traj, ic_of, t_of, tc, ctx.device)
    trip = rank_triplet(mse)
    best, median, worst = (gather_candidates(cands, trip[:, j : j + 1]).squeeze(1) for j in range(3))
    arrays = {"state": states, "truth": truth, "best": best, "median": median, "worst": worst,
              "candidates": cands, "mse": mse, "next_mse": next_mse, "det": det, "det_mse": det_mse,
              "ic": data.indices["train"][ic_of.numpy()], "step": t_of, "from_rollout": from_rollout,
              "norm_mean": norm.mean.cpu(), "norm_std": norm.std.cpu()}
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    attrs = {"problem": problem.name, "k": tc.k, "states": tc.states, "sampler": cfg.sampling.sampler,
             "latent_sigma": cfg.sampling.latent_sigma, "input_eps": cfg.sampling.input_eps, "seed": tc.seed,
             "label": tc.label, "horizon": tc.horizon if tc.label == "horizon" else 0, "label_reduce": tc.label_reduce}
    stats = {"triplets/n_ics": n_ic, "triplets/n_states": len(states), "triplets/k": tc.k,
             "triplets/sample_s": seconds, "triplets/candidates_per_s": len(states) * tc.k / seconds,
             "triplets/label_s": label_seconds,  # look-ahead labels: H forward passes per candidate
             "triplets/label_forward_passes": len(states) * tc.k * tc.horizon if tc.label == "horizon" else 0,
             **diversity(next_mse, det_mse, tuple(sorted({min(5, tc.k), tc.k})))}
    run.log(stats)
    run.tags({"ttclab.sampler": cfg.sampling.sampler, "ttclab.split": "train"})
    with tempfile.TemporaryDirectory(prefix="ttclab-triplets-") as tmp:
        path = pdebench.write_triplets(Path(tmp) / Path(TRIPLETS_ARTIFACT).name, arrays, attrs)
        run.artifact(path, str(Path(TRIPLETS_ARTIFACT).parent))
    if ctx.progress:
        print(f"[ttclab] {len(states)} states x K={tc.k} candidates from {n_ic} train ICs in {seconds:.1f}s; "
              f"relative MSE spread {stats['triplets/spread']:.3f}, oracle gap {stats['triplets/oracle_gap']:.3f}")
    return {"path": run.artifact_dir() / TRIPLETS_ARTIFACT, **stats}


def triplets_path(cfg, ctx) -> Path:
    return ctx.input("triplets", cfg)


def held_out_report(model, val: dict, set_size: int, seed: int, device) -> tuple[dict, dict]:
    """Ranking quality on held-out states, over all K candidates of each state (triplet accuracy on
    the stored best/median/worst, Spearman, ECE, top-1), and as a selector on random sets of
    `set_size` candidates, the TTC situation: one-step MSE of the PRM's pick next to a random pick,
    the oracle pick and the deterministic prediction, and the share of the oracle's gain over a
    random pick that the PRM captures, (random - prm) / (random - oracle), from means over states."""
    scores = score_all(model, val, device=device)
    mse = val["mse"]
    out = ranking_report(scores, mse)
    # Against the true next-state error too: with triplets.label=horizon, `mse` is the H-step label.
    out["prm/spearman_next"] = ranking_report(scores, val.get("next_mse", mse))["prm/spearman"]
    out["prm/triplet_acc"] = triplet_accuracy(scores.gather(1, rank_triplet(mse)))
    subset, _ = draw_sets(mse, set_size, torch.Generator().manual_seed(seed))
    sub_scores = score_all(model, val, gather_candidates(val["cands"], subset), device=device)
    sub_mse = mse.gather(1, subset)
    pick = sub_mse.gather(1, sub_scores.argmax(1, keepdim=True)).mean()
    oracle, rand = sub_mse.min(1).values.mean(), sub_mse[:, 0].mean()
    n = f"prm/n{set_size}"
    out.update({f"{n}/spearman": ranking_report(sub_scores, sub_mse)["prm/spearman"],
                f"{n}/onestep_mse_prm": float(pick), f"{n}/onestep_mse_random": float(rand),
                f"{n}/onestep_mse_oracle": float(oracle), "prm/onestep_mse_det": float(val["det_mse"].mean()),
                f"{n}/captured": float((rand - pick) / (rand - oracle))})
    return out, calibration(scores, mse)


@stage("train_prm", key=("prm",), inputs=(TRIPLETS, OPERATOR.when(lambda cfg: cfg.prm.anchor == "operator")),
       run_name=lambda cfg: f"train_prm · {cfg.prm.head} · s{cfg.prm.seed}", registers="prm", system_metrics=True)
def train_prm(cfg, ctx, run):
    """Train the PRM on ranked candidates; log held-out ranking metrics and model/prm.pt."""
    from ..tracking.prm_figures import reliability_html

    pc = cfg.prm
    path = triplets_path(cfg, ctx)
    raw = pdebench.read_triplets(path, keys=("state", "truth", "candidates", "mse", "det", "det_mse", "ic",
                                             "norm_mean", "norm_std"))
    norm = Normalizer(raw["norm_mean"], raw["norm_std"])
    ndim = raw["state"].ndim - 2

    def encode(key):
        u = torch.from_numpy(raw[key])
        return norm.encode(u.flatten(0, u.ndim - ndim - 2), ndim).view(u.shape)

    data = {"state": encode("state"), "truth": encode("truth"), "cands": encode("candidates"),
            "mse": torch.from_numpy(raw["mse"]), "det_mse": torch.from_numpy(raw["det_mse"]),
            # older files have no next_mse (their labels are next-state MSEs) or step
            "next_mse": torch.from_numpy(raw.get("next_mse", raw["mse"])),
            "step": torch.from_numpy(raw["step"]) if "step" in raw else torch.zeros(len(raw["mse"]), dtype=torch.long)}
    if pc.anchor == "operator":
        data["anchor"] = encode("det")
    # Held-out split by IC: no state of a validation IC is ever seen in training.
    ic = torch.from_numpy(raw["ic"])
    uniq = ic.unique()
    n_val = max(1, round(pc.val_fraction * len(uniq)))
    is_val = torch.isin(ic, uniq[torch.randperm(len(uniq), generator=torch.Generator().manual_seed(pc.seed))[:n_val]])
    train_data = {k: v[~is_val] for k, v in data.items()}
    val_data = {k: v[is_val] for k, v in data.items()}
    n_fields = data["state"].shape[1]
    torch.manual_seed(pc.seed)
    model = PRM(pc, n_fields=n_fields, ndim=ndim)
    run.log({"prm/n_params": sum(p.numel() for p in model.parameters()), "prm/n_train_states": len(train_data["state"]),
             "prm/n_val_states": len(val_data["state"])})
    start = time.perf_counter()
    result = train_loop(model, train_data, val_data, pc, device=ctx.device, log=run.log, progress=ctx.progress,
                        on_epoch=lambda epoch, val, state: run.report("val/loss", val["val/loss"], epoch))
    seconds = time.perf_counter() - start
    report, calib = held_out_report(model, val_data, pc.set_size, pc.seed, ctx.device)
    # The operator anchor is part of the reward: embed the operator so the checkpoint is self-contained.
    operator = checkpoint.read(operator_path(cfg, ctx)) if pc.anchor == "operator" else None
    report.update({"val/best_loss": result["best_val"], "prm/best_epoch": result["best_epoch"], "prm/train_s": seconds})
    run.log(report, result["step"])
    # Ranking quality vs rollout step (metric step = rollout step) against the next-state error and
    # the training label (the H-step error with triplets.label=horizon).
    by_step = ranking_by_step(score_all(model, val_data, device=ctx.device),
                              {"next": val_data["next_mse"], "label": val_data["mse"]}, val_data["step"])
    for name, curve in by_step.items():
        for t, value in curve.items():
            run.log({f"prm/by_step/{name}": value}, t)
    with tempfile.TemporaryDirectory(prefix="ttclab-prm-") as tmp:
        ckpt = save_prm(Path(tmp) / Path(PRM_ARTIFACT).name, model.cpu(), norm, cfg.to_dict()["problem"],
                        cfg.to_dict()["prm"], n_fields, operator=operator, best_val=result["best_val"])
        run.artifact(ckpt, str(Path(PRM_ARTIFACT).parent))
    run.text(reliability_html(calib, report), "figures/prm_reliability.html")
    # The same buckets as data, for compare's reliability panel of the ttc runs that used this PRM.
    run.text(json.dumps({k: np.asarray(v).tolist() for k, v in calib.items()}), CALIBRATION_ARTIFACT)
    if ctx.progress:
        print(f"[ttclab] PRM held-out: triplet acc {report['prm/triplet_acc']:.3f}, Spearman "
              f"{report['prm/spearman']:.3f}, ECE {report['prm/ece']:.3f}; at N={pc.set_size} it captures "
              f"{report[f'prm/n{pc.set_size}/captured']:.2f} of the oracle's one-step gain over a random pick")
    return {"checkpoint": run.artifact_dir() / PRM_ARTIFACT, **report}
