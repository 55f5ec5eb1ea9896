"""Stage `ttc`: evaluate one selector on held-out ICs, always next to its controls.

Every run rolls out, on the same ICs and with the same candidate seed: the deterministic baseline
(for SampleGain), the selector itself, and the references random pick, ensemble mean and oracle
pick at the same N. The selector's numbers use the contract's metric keys; the controls are logged
under `control/<name>/...`, so no gain can be credited to a reward that random picks also give.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..data.datasets import SplitData
from ..metrics.rollout import (conservation_drift, correlation_time, crmse_per_step, default_horizons, frmse_per_step,
                               maxerr_per_step, mse_per_step, nrmse_per_step, rmse_per_field)
from ..metrics.prm import ranking_curves, spearman
from ..metrics.ttc import best_pick_rate, gain_with_ci, headroom_captured, sample_gain, summarize_gain
from ..rewards import control_names, make_reward, selector_names
from ..tracking import figures
from ..models.checkpoint import load_operator
from ..sampling.ensemble import Ensemble, member_seeds
from ..training.triplet import horizon_errors
from ..ttc.search import SELECTOR_KEYS, SearchResult, search
from . import STAGES, stage
from . import controls as control_cache
from .common import DATA, OPERATOR, PRM, data_path, operator_paths
from .members import train_missing


def _reward(name, cfg, ctx, problem):
    """Selector `name` with every dependency a reward may take. The PRM gets `problem` too, so a PRM
    trained on another problem is refused; only the PRM reads its checkpoint (an upstream input)."""
    deps = {"problem": problem, "arm": cfg.arm, "device": ctx.device,
            "generator": torch.Generator(device=ctx.device).manual_seed(cfg.sampling.seed + 1)}
    if name == "prm":
        deps["prm_path"] = ctx.input("prm", cfg)
    return make_reward(name, **deps)


def comparison_key(cfg) -> str:
    """Runs that share this key differ only in the selector, the projection flag and the candidate
    seed, so they belong in one comparison table (same data, operator, PRM, sampler, N, K, split, ICs),
    a row per selector and projection flag, aggregated over candidate seeds: every section of the ttc
    stage's key, its upstream ones included, with ttc less search.SELECTOR_KEYS and sampling less its seed."""
    d = cfg.to_dict()
    ttc = {k: v for k, v in d["ttc"].items() if k not in SELECTOR_KEYS}
    sampling = {k: v for k, v in d["sampling"].items() if k != "seed"}
    blob = json.dumps([cfg.key(*(s for s in STAGES.get("ttc").key if s not in ("ttc", "sampling"))), ttc, sampling],
                      sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def variant(cfg) -> str:
    """What a ttc run is, for grouping in the UI: selector, `+proj` when projected, and the sampler
    (`arm+proj@latent_noise`); grouping by ttclab.selector alone averages projected and plain runs."""
    return f"{cfg.ttc.reward}{'+proj' if cfg.ttc.project_conservation else ''}@{cfg.sampling.sampler}"


def run_name(cfg) -> str:
    """`ttc · arm · N5 · +proj`, `ttc · prm · N5 · beam2`: the settings that tell the demo's runs apart."""
    t = cfg.ttc
    parts = ["ttc", t.reward, f"N{t.branching}"] + ([f"beam{t.beam}"] if t.beam > 1 else [])
    parts += ["latent"] if t.rollout == "latent" else []
    return " · ".join(parts + (["+proj"] if t.project_conservation else []))


def _evaluate(problem, truth, traj, threshold: float = 0.8):
    """Per IC and step (B, T) unless noted: the errors every table reports (metrics/rollout.py)."""
    return {"traj": traj, "mse": mse_per_step(traj, truth), "nrmse": nrmse_per_step(traj, truth),
            "drift": conservation_drift(problem, traj), "crmse": crmse_per_step(problem, traj, truth),
            "frmse": frmse_per_step(traj, truth, problem.ndim), "maxerr": maxerr_per_step(traj, truth),
            "rmse": dict(zip(problem.fields, rmse_per_field(traj, truth).unbind(2))),
            "corr_time": correlation_time(traj, truth, threshold).double()}  # (B,)


@dataclass
class Rollouts:
    """What every rollout of one ttc run shares: operator, held-out ICs, candidate seed, N, K."""

    cfg: Any
    ctx: Any
    model: Any
    normalizer: Any
    problem: Any
    truth: torch.Tensor
    memo: str  # controls.base_key: with (name, projection), everything that determines a control

    def run(self, name: str, project: bool, on_step=None, look_ahead=None) -> SearchResult:
        t = self.cfg.ttc
        gen = torch.Generator(device=self.ctx.device).manual_seed(self.cfg.sampling.seed)
        reward = _reward(name, self.cfg, self.ctx, self.problem)
        return search(self.model, self.normalizer, self.problem, self.truth, reward, branching=t.branching, beam=t.beam,
                      sampling_cfg=self.cfg.sampling, project=project, generator=gen, on_step=on_step,
                      rollout=t.rollout, look_ahead=look_ahead)

    def look_ahead(self) -> tuple[Any, list[int]]:
        """ttc.rank_horizon = H: search's look_ahead (the error of each candidate of step t after H more
        deterministic steps, H capped at the data's end, reduced like triplets.label_reduce: the
        PRM's horizon label, training.triplet.horizon_errors), and a counter of its forward passes.
        The continuation reads fields (the operator's own step, member 0 of an ensemble), in a
        latent rollout too, as build_prm's labels do."""
        nd, last, count = self.problem.ndim, self.truth.shape[1] - 1, [0]

        def step(u):
            count[0] += len(u)
            return self.normalizer.decode(self.model(self.normalizer.encode(u, nd)), nd)

        def look(t, cand, ic):
            ahead = t + 1 + torch.arange(min(self.cfg.ttc.rank_horizon, last - t - 1) + 1, device=cand.device)
            future = self.truth[ic.unsqueeze(1), ahead]  # (R, H+1, C, *X): frames t+1 .. t+1+H
            valid = torch.ones(future.shape[:2], dtype=torch.bool, device=cand.device)
            return horizon_errors(step, cand, future, valid, self.cfg.triplets.label_reduce)

        return look, count

    def reference(self, name: str, project: bool) -> dict:
        """A control rollout, evaluated; computed once per comparison across processes (see controls.py)."""
        return control_cache.evaluated(self.ctx, self.ctx.current, self.memo, name, project,
                                       lambda: self.run(name, project).trajectory,
                                       lambda traj: _evaluate(self.problem, self.truth, traj,
                                                              self.cfg.ttc.corr_threshold))


def _operators(cfg, ctx) -> list:
    """The operator's checkpoint, or one per ensemble member (stages/common.py:operator_paths); the
    missing members are trained first in parallel processes when cores allow."""
    if "ensemble" in cfg.sampling.parts and "operator" not in ctx.inputs:
        train_missing([dataclasses.replace(cfg, seed=s) for s in member_seeds(cfg.seed, cfg.sampling.members)], ctx)
    return operator_paths(cfg, ctx)


def _load(cfg, ctx) -> Rollouts:
    op_paths, d_path = _operators(cfg, ctx), data_path(cfg, ctx, cfg.ttc.split, "evaluation")
    loaded = [load_operator(p, cfg.problem, ctx.device) for p in op_paths]  # refuses other physics
    model, normalizer, problem = loaded[0]
    if len(loaded) > 1:  # members share the data, hence the normalizer; candidates are in its units
        model = Ensemble([m for m, _, _ in loaded])
    truth = SplitData(d_path, problem, cfg.data)[cfg.ttc.split][: cfg.ttc.n_ics or None].to(ctx.device)
    keys = [control_cache.base_key(cfg, p, d_path, ctx.device) for p in op_paths]
    memo = keys[0] if len(keys) == 1 else hashlib.sha1(" ".join(keys).encode()).hexdigest()[:16]
    return Rollouts(cfg, ctx, model, normalizer, problem, truth, memo)


def _member_controls(r: Rollouts) -> dict:
    """Each ensemble member's own deterministic rollout, `member<i>`, under the run's projection flag
    (member 0 too: projected, it is not the unprojected baseline), so the best single member is
    visible next to the ensemble's selectors and compare can rank them like for like."""
    if not isinstance(r.model, Ensemble):
        return {}
    out = {}
    for i, member in enumerate(r.model.members):
        res = search(member, r.normalizer, r.problem, r.truth, _reward("baseline", r.cfg, r.ctx, r.problem),
                     sampling_cfg=r.cfg.sampling, project=r.cfg.ttc.project_conservation, rollout=r.cfg.ttc.rollout)
        out[f"member{i}"] = _evaluate(r.problem, r.truth, res.trajectory, r.cfg.ttc.corr_threshold)
    return out


def _pruning_report(run, truth, horizons):
    """on_step callback: the rollout MSE at each horizon as an intermediate objective value, so a
    sweep can prune a trial mid-rollout."""

    def report(step, state):
        if step in horizons:
            run.report(f"rollout_mse/h{step}", float(((state - truth[:, step]) ** 2).mean()), step)

    return report


def _selector_metrics(ev, base, main: SearchResult, horizons, n_ics) -> dict:
    """The contract's keys for the selector itself: rollout errors and drift per horizon,
    SampleGain against the baseline, cost per IC, and reward diagnostics."""
    metrics = {}
    for h in horizons:
        metrics[f"rollout_mse/h{h}"] = float(ev["mse"][:, h].mean())
        metrics[f"rollout_nrmse/h{h}"] = float(ev["nrmse"][:, h].mean())
        metrics[f"rollout_crmse/h{h}"] = float(ev["crmse"][:, h].mean())
        metrics[f"rollout_maxerr/h{h}"] = float(ev["maxerr"][:, h].mean())
        for band, e in ev["frmse"].items():
            metrics[f"rollout_frmse/{band}/h{h}"] = float(e[:, h].mean())
        for field, e in ev["rmse"].items():
            metrics[f"rollout_rmse/{field}/h{h}"] = float(e[:, h].mean())
        for q, d in ev["drift"].items():
            metrics[f"conservation/{q}/h{h}"] = float(d[:, h].mean())
    metrics["ttc/corr_time/mean"] = float(ev["corr_time"].mean())
    metrics["ttc/corr_time/median"] = float(ev["corr_time"].median())
    metrics |= summarize_gain(sample_gain(base["mse"][:, -1], ev["mse"][:, -1]))
    metrics |= gain_with_ci(base["mse"][:, -1], ev["mse"][:, -1], "sample_gain")
    steps = ev["mse"].shape[1] - 1
    metrics |= {"cost/model_evals": main.model_evals / n_ics, "cost/forward_per_step": main.model_evals / n_ics / steps, "cost/reward_evals": main.reward_evals / n_ics,
                "cost/wall_s": main.wall_s, "cost/fallbacks": main.fallbacks, "ttc/n_ics": n_ics,
                "cost/projection_refused": main.projection_refused,
                "cost/projection_partial": main.projection_partial}
    if main.scores and main.scores[0].shape[1] > 1:
        scores = torch.cat(main.scores)
        for suffix, per_step in (("", main.errors), ("_horizon", main.ahead)):  # vs next-state, vs H-step error
            if per_step:
                metrics[f"reward/spearman{suffix}"] = float(spearman(scores, torch.cat(per_step)).mean())
                metrics[f"reward/best_pick_rate{suffix}"] = best_pick_rate(scores, torch.cat(per_step))
    for term, (chosen, mean, count) in main.terms.items():
        metrics[f"reward/terms/{term}/chosen"] = chosen / count
        metrics[f"reward/terms/{term}/all"] = mean / count
    return metrics


def _control_metrics(base, controls: dict, horizons, steps) -> dict:
    """`control/<name>/...`: the baseline per horizon, every other control's final MSE and gain."""
    metrics = {f"control/baseline/rollout_mse/h{h}": float(base["mse"][:, h].mean()) for h in horizons}
    for name, c_ev in controls.items():
        metrics[f"control/{name}/rollout_mse/h{steps}"] = float(c_ev["mse"][:, -1].mean())
        gain = summarize_gain(sample_gain(base["mse"][:, -1], c_ev["mse"][:, -1]))
        metrics |= {f"control/{name}/{k}": v for k, v in gain.items()}
    return metrics


@stage("ttc", key=("sampling", "ttc", "arm"),
       inputs=(DATA, OPERATOR, PRM.when(lambda cfg: cfg.ttc.reward == "prm")),
       help=f"Run one TTC selector (ttc.reward: {' | '.join(selector_names())}) with its controls on held-out ICs.",
       run_name=run_name)
def ttc(cfg, ctx, run):
    """Run one TTC selector (ttc.reward) with its controls on held-out ICs; log metrics and figures."""
    t, r = cfg.ttc, _load(cfg, ctx)
    truth = r.truth
    run.tags({"ttclab.selector": t.reward, "ttclab.sampler": cfg.sampling.sampler, "ttclab.split": t.split,
              "ttclab.projection": str(t.project_conservation).lower(), "ttclab.rollout": t.rollout,
              "ttclab.compare_key": comparison_key(cfg), "ttclab.variant": variant(cfg)})
    steps = truth.shape[1] - 1
    horizons = default_horizons(steps, t.horizons)
    base = r.reference("baseline", False)
    look, diagnostic_passes = r.look_ahead() if t.rank_horizon else (None, [0])
    main = r.run(t.reward, t.project_conservation, on_step=_pruning_report(run, truth, horizons), look_ahead=look)
    ev = _evaluate(r.problem, truth, main.trajectory, t.corr_threshold)
    controls = {name: r.reference(name, t.project_conservation) for name in control_names() if name != t.reward}
    controls |= _member_controls(r)
    metrics = _selector_metrics(ev, base, main, horizons, truth.shape[0])
    metrics["cost/diagnostic_forward_per_step"] = diagnostic_passes[0] / truth.shape[0] / steps
    metrics |= _control_metrics(base, controls, horizons, steps)
    # What a reward must beat: the same candidates picked blindly or averaged, and each single member.
    for ref in ("random", "ensemble", *(name for name in controls if name.startswith("member"))):
        if ref in controls:
            metrics |= gain_with_ci(controls[ref]["mse"][:, -1], ev["mse"][:, -1], f"gain_vs/{ref}")
    final = metrics[f"rollout_mse/h{steps}"]
    oracle_final = metrics.get(f"control/oracle/rollout_mse/h{steps}", final)
    metrics["ttc/headroom_captured"] = headroom_captured(float(base["mse"][:, -1].mean()), final, oracle_final)
    run.log(metrics)
    for h in range(1, steps + 1):
        run.log({"rollout_mse": float(ev["mse"][:, h].mean()), "rollout_nrmse": float(ev["nrmse"][:, h].mean())}, h)
    # where along the rollout the reward stops ranking, against the next-state and the H-step error
    ranking = ranking_curves(main.scores, {"next": main.errors} | ({"horizon": main.ahead} if main.ahead else {}))
    for name, curve in ranking.items():
        for h, value in curve.items():
            run.log({f"reward/by_step/{name}": value}, h)
    if ranking:
        by_step = {name: np.array([curve.get(h, np.nan) for h in range(steps + 1)]) for name, curve in ranking.items()}
        run.text(figures.curves(by_step, f"Ranking of the {t.reward} scores vs true error (next state; horizon: "
                                         f"{t.rank_horizon} steps later), per step",
                                "step", "value (Spearman: +1 = perfect ranking)", log_y=False),
                 "figures/ranking_by_step.html")
    curves = {"baseline": base["mse"].mean(0), t.reward: ev["mse"].mean(0)}
    curves |= {name: c_ev["mse"].mean(0) for name, c_ev in controls.items()}
    gain = sample_gain(base["mse"][:, -1], ev["mse"][:, -1])
    _artifacts(run, r.problem, truth, base, ev, gain, curves, horizons, t.reward, main.trajectory)
    if ctx.progress:
        print(f"[ttclab] ttc {t.reward} N={t.branching} K={t.beam}{' +projection' if t.project_conservation else ''}: "
              f"final MSE {final:.4e} (baseline {float(base['mse'][:, -1].mean()):.4e}), "
              f"SampleGain mean {metrics['sample_gain/mean']:.1f}%")
    return metrics


def _artifacts(run, problem, truth, base, ev, gain, curves, horizons, name, traj):
    buf = io.StringIO()
    writer = csv.writer(buf)
    per_step = {"mse": ev["mse"], "nrmse": ev["nrmse"], "crmse": ev["crmse"], "maxerr": ev["maxerr"]}
    per_step |= {f"frmse_{b}": e for b, e in ev["frmse"].items()} | {f"rmse_{f}": e for f, e in ev["rmse"].items()}
    per_step |= {f"drift_{q}": d for q, d in ev["drift"].items()}
    writer.writerow(["ic"] + [f"{k}_h{h}" for k in per_step for h in horizons]
                    + ["corr_time", "baseline_mse_final", "sample_gain"])
    for i in range(truth.shape[0]):
        writer.writerow([i] + [f"{float(v[i, h]):.6e}" for v in per_step.values() for h in horizons]
                        + [f"{int(ev['corr_time'][i])}", f"{float(base['mse'][i, -1]):.6e}", f"{float(gain[i]):.4f}"])
    run.text(buf.getvalue(), "per_ic.csv")
    as_np = {k: v.cpu().numpy() for k, v in curves.items()}
    run.text(figures.curves(as_np, "Rollout MSE vs horizon (mean over ICs)", "step", "MSE"), "figures/rollout_mse.html")
    drift = {q: {"truth": d.mean(0).cpu().numpy() + 1e-16, name: ev["drift"][q].mean(0).cpu().numpy() + 1e-16}
             for q, d in conservation_drift(problem, truth).items()}
    for q in drift:
        drift[q]["baseline"] = base["drift"][q].mean(0).cpu().numpy() + 1e-16
    run.text(figures.panels(drift, "Conservation drift |Q(t)-Q(0)| / int|q(0)|", "step"), "figures/conservation.html")
    run.text(figures.histogram(gain.cpu().numpy(), f"SampleGain of {name} vs baseline (per IC)", "SampleGain (%)"),
             "figures/sample_gain.html")
    example = {"truth": truth[0].cpu().numpy(), "baseline": base["traj"][0].cpu().numpy(), name: traj[0].cpu().numpy()}
    times = sorted({1, truth.shape[1] // 2, truth.shape[1] - 1})
    x = problem.cell_centres(0)  # on the problem's domain: PDEBench's CFD files cover (-1, 1)
    if problem.ndim == 1:
        run.text(figures.fields_at_times(x, list(problem.fields), times, example), "figures/example.html")
    else:  # heat maps at the same times
        run.text(figures.heatmaps_at_times(x, problem.cell_centres(1), list(problem.fields), times, example),
                 "figures/example.html")
