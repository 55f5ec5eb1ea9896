"""Stage `ttc`: evaluate one selector on held-out ICs, always next to its controls.

Every run rolls out, on the same ICs and with the same candidate seed: the deterministic baseline
(for SampleGain), the selector itself, and the references random pick, ensemble mean and oracle
pick at the same N. The selector's numbers use the contract's metric keys; the controls are logged
under `control/<name>/...`, so no gain can be credited to a reward that random picks also give.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json

import numpy as np
import torch

from ..data.datasets import SplitData
from ..metrics.rollout import conservation_drift, default_horizons, mse_per_step, nrmse_per_step
from ..metrics.prm import spearman
from ..metrics.ttc import best_pick_rate, headroom_captured, sample_gain, summarize_gain
from ..rewards import make_reward
from ..tracking import figures
from ..models.checkpoint import load_operator
from ..ttc.search import search
from . import STAGES, stage
from .common import DATA, OPERATOR, PRM, data_path, operator_path

CONTROLS = ("random", "ensemble", "oracle")
_REFERENCES: dict = {}


def prm_path(cfg, ctx):
    return ctx.input("prm", cfg)


def _reward(name, cfg, ctx, problem, seed):
    if name == "prm":
        return make_reward("prm", prm_path=prm_path(cfg, ctx), device=ctx.device)
    return make_reward(name, problem=problem, arm=cfg.arm, generator=torch.Generator().manual_seed(seed + 1))


def comparison_key(cfg) -> str:
    """Runs that share this key differ only in the selector and the projection flag, so they
    belong in one comparison table (same data, operator, PRM, sampler, N, K, split, ICs): every
    section of the ttc stage's key, its upstream ones included, with the ttc section less those two."""
    ttc = {k: v for k, v in cfg.to_dict()["ttc"].items() if k not in ("reward", "project_conservation")}
    blob = json.dumps([cfg.key(*(s for s in STAGES.get("ttc").key if s != "ttc")), ttc], sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _evaluate(problem, truth, traj):
    return {"traj": traj, "mse": mse_per_step(traj, truth), "nrmse": nrmse_per_step(traj, truth),
            "drift": conservation_drift(problem, traj)}


@stage("ttc", key=("sampling", "ttc", "arm"),
       inputs=(DATA, OPERATOR, PRM.when(lambda cfg: cfg.ttc.reward == "prm")))
def ttc(cfg, ctx, run):
    """Run one TTC selector (ttc.reward) with its controls on held-out ICs; log metrics and figures."""
    t = cfg.ttc
    op_path, d_path = operator_path(cfg, ctx), data_path(cfg, ctx)
    model, normalizer, problem = load_operator(op_path, cfg.problem.type, ctx.device)
    data = SplitData(d_path, problem, cfg.data)
    truth = data[t.split][: t.n_ics or None].to(ctx.device)
    run.tags({"ttclab.selector": t.reward, "ttclab.sampler": cfg.sampling.sampler, "ttclab.split": t.split,
              "ttclab.projection": str(t.project_conservation).lower(),
              "ttclab.compare_key": comparison_key(cfg)})

    steps = truth.shape[1] - 1
    horizons = default_horizons(steps, t.horizons)

    def rollout(name, project=t.project_conservation, on_step=None):
        gen = torch.Generator(device=ctx.device).manual_seed(cfg.sampling.seed)
        reward = None if name in ("baseline", "ensemble") else _reward(name, cfg, ctx, problem, cfg.sampling.seed)
        return search(model, normalizer, problem, truth, name, reward, branching=t.branching, beam=t.beam,
                      sampling_cfg=cfg.sampling, project=project, generator=gen, on_step=on_step)

    def report(step, state):  # intermediate objective values, so a sweep can prune mid-rollout
        if step in horizons:
            run.report(f"rollout_mse/h{step}", float(((state - truth[:, step]) ** 2).mean()), step)

    def reference(name, project=t.project_conservation):
        """A control rollout, evaluated; memoized per process because it is fully determined by
        the inputs and seeds (the demo's nine ttc runs share their baseline and controls)."""
        key = (str(op_path), str(d_path), comparison_key(cfg), name, project, str(ctx.device))
        if key not in _REFERENCES:
            if len(_REFERENCES) >= 16:  # a long sweep process must not grow without bound
                _REFERENCES.clear()
            _REFERENCES[key] = _evaluate(problem, truth, rollout(name, project=project).trajectory)
        return _REFERENCES[key]

    base = reference("baseline", project=False)
    main = rollout(t.reward, on_step=report)
    ev = _evaluate(problem, truth, main.trajectory)
    metrics = {}
    for h in horizons:
        metrics[f"rollout_mse/h{h}"] = float(ev["mse"][:, h].mean())
        metrics[f"rollout_nrmse/h{h}"] = float(ev["nrmse"][:, h].mean())
        for q, d in ev["drift"].items():
            metrics[f"conservation/{q}/h{h}"] = float(d[:, h].mean())
    gain = sample_gain(base["mse"][:, -1], ev["mse"][:, -1])
    n_ics = truth.shape[0]
    metrics |= summarize_gain(gain)
    metrics |= {"cost/model_evals": main.model_evals / n_ics, "cost/reward_evals": main.reward_evals / n_ics,
                "cost/wall_s": main.wall_s, "cost/fallbacks": main.fallbacks, "ttc/n_ics": n_ics}
    if main.scores:
        scores, errors = torch.cat(main.scores), torch.cat(main.errors)
        if scores.shape[1] > 1:
            metrics["reward/spearman"] = float(spearman(scores, errors).mean())
            metrics["reward/best_pick_rate"] = best_pick_rate(scores, errors)
    for term, (chosen, mean, count) in main.terms.items():
        metrics[f"reward/terms/{term}/chosen"] = chosen / count
        metrics[f"reward/terms/{term}/all"] = mean / count
    curves = {"baseline": base["mse"].mean(0), t.reward: ev["mse"].mean(0)}
    for h in horizons:
        metrics[f"control/baseline/rollout_mse/h{h}"] = float(base["mse"][:, h].mean())
    for name in (c for c in CONTROLS if c != t.reward):
        c_ev = reference(name)
        curves[name] = c_ev["mse"].mean(0)
        metrics[f"control/{name}/rollout_mse/h{steps}"] = float(c_ev["mse"][:, -1].mean())
        metrics |= {f"control/{name}/{k}": v for k, v in summarize_gain(sample_gain(base["mse"][:, -1], c_ev["mse"][:, -1])).items()}
    oracle_final = metrics.get(f"control/oracle/rollout_mse/h{steps}", metrics[f"rollout_mse/h{steps}"])
    metrics["ttc/headroom_captured"] = headroom_captured(float(base["mse"][:, -1].mean()),
                                                         metrics[f"rollout_mse/h{steps}"], oracle_final)
    run.log(metrics)
    for h in range(1, steps + 1):
        run.log({"rollout_mse": float(ev["mse"][:, h].mean()), "rollout_nrmse": float(ev["nrmse"][:, h].mean())}, h)
    _artifacts(run, problem, truth, base, ev, gain, curves, horizons, t.reward, main.trajectory, data)
    if ctx.progress:
        print(f"[ttclab] ttc {t.reward} N={t.branching} K={t.beam}{' +projection' if t.project_conservation else ''}: "
              f"final MSE {metrics[f'rollout_mse/h{steps}']:.4e} (baseline {float(base['mse'][:, -1].mean()):.4e}), "
              f"SampleGain mean {metrics['sample_gain/mean']:.1f}%")
    return metrics


def _artifacts(run, problem, truth, base, ev, gain, curves, horizons, name, traj, data):
    buf = io.StringIO()
    writer = csv.writer(buf)
    drift_keys = list(ev["drift"])
    writer.writerow(["ic"] + [f"mse_h{h}" for h in horizons] + [f"nrmse_h{h}" for h in horizons]
                    + [f"drift_{q}_h{h}" for q in drift_keys for h in horizons] + ["baseline_mse_final", "sample_gain"])
    for i in range(truth.shape[0]):
        writer.writerow([i] + [f"{float(ev['mse'][i, h]):.6e}" for h in horizons]
                        + [f"{float(ev['nrmse'][i, h]):.6e}" for h in horizons]
                        + [f"{float(ev['drift'][q][i, h]):.6e}" for q in drift_keys for h in horizons]
                        + [f"{float(base['mse'][i, -1]):.6e}", f"{float(gain[i]):.4f}"])
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
    if problem.ndim == 1:
        example = {"truth": truth[0].cpu().numpy(), "baseline": base["traj"][0].cpu().numpy(),
                   name: traj[0].cpu().numpy()}
        x = (np.arange(truth.shape[-1]) + 0.5) / truth.shape[-1]
        times = sorted({1, truth.shape[1] // 2, truth.shape[1] - 1})
        run.text(figures.fields_at_times(x, list(problem.fields), times, example), "figures/example.html")
