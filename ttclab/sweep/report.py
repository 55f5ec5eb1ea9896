"""The end of a sweep, logged on its parent run: best value and params, `best_trial.json`, Optuna's
figures (offline HTML), and the honest number: the best config re-run once on the test split.

Finalizing again with no new finished trial (a resumed sweep with nothing left to do) logs
nothing (`ttclab.sweep.reported` counts the finished trials reported), and the test re-run happens
once per best trial (`ttclab.sweep.tested`).
"""

from __future__ import annotations

import json
from typing import Callable

import optuna
from optuna import visualization as vis
from optuna.trial import TrialState

from ..stages import Context
from ..tracking.figures import to_html
from .spec import SweepSpec


def _figures(spec: SweepSpec, study: optuna.Study, n_complete: int) -> dict:
    """Plotly figures by name; importances need two finished trials with differing params."""
    first = spec.objective[0].metric
    kw = {"target": (lambda t: t.values[0]), "target_name": first} if spec.multi else {"target_name": first}
    figs = {"history": vis.plot_optimization_history(study, **kw)}
    if spec.space:
        figs["parallel_coordinate"] = vis.plot_parallel_coordinate(study, **kw)
        figs["slice"] = vis.plot_slice(study, **kw)
    if n_complete >= 2 and spec.space:
        try:
            figs["importances"] = vis.plot_param_importances(study, **kw)
        except (ValueError, RuntimeError, ZeroDivisionError, ImportError):
            pass  # no parameter varied among the finished trials (or no scikit-learn for fANOVA)
    if spec.multi:
        figs["pareto_front"] = vis.plot_pareto_front(study, target_names=[o.metric for o in spec.objective])
    elif spec.pruner.type != "none":
        figs["intermediate_values"] = vis.plot_intermediate_values(study)
    return figs


def _summary(spec: SweepSpec, study: optuna.Study, best: list, run_ids: dict) -> dict:
    def describe(t):
        return {"number": t.number, "values": t.values, "params": t.params, "run_id": run_ids.get(t.number)}

    counts = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,)))
              for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    return {"study": spec.name, "stage": spec.stage, "objective": [vars(o) for o in spec.objective],
            "fixed": spec.fixed, "best": describe(best[0]), "pareto_front": [describe(t) for t in best] if spec.multi else None,
            "trials": counts}


def baseline_value(metric: str, run_metrics: dict) -> float | None:
    """The deterministic baseline's value of a ttc objective, from a trial's run: every ttc run logs
    the baseline's rollout errors as control/baseline/<key>, and SampleGain is measured against the
    baseline, so the baseline's own is 0. None for an objective with no baseline (prm, trc)."""
    if metric.startswith("sample_gain/"):
        return 0.0
    return run_metrics.get(f"control/baseline/{metric}")


def versus_baseline(spec: SweepSpec, complete: list, base: float | None) -> str:
    """The line that says plainly whether any finished trial beats the baseline."""
    if base is None:
        return f"no deterministic baseline for {spec.objective[0].metric}"
    sign = 1 if spec.objective[0].direction == "minimize" else -1
    beat = [t for t in complete if sign * t.values[0] < sign * base]
    verdict = f"{len(beat)} of {len(complete)} finished trials beat it" if beat else "no trial beats it"
    return f"deterministic baseline {spec.objective[0].metric}={base:.4g}: {verdict}"


def finalize(spec: SweepSpec, study: optuna.Study, parent, ctx: Context, say: Callable[[str], None]) -> dict | None:
    """Log the sweep's results on `parent` (a tracking Run); returns the best_trial.json content."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        say(f"[sweep {spec.name}] no completed trial: nothing to report")
        return None
    # For several objectives the Pareto front is reported, and its member best on the first
    # objective stands in for "the best config" in the test re-run.
    sign = 1 if spec.objective[0].direction == "minimize" else -1
    best = sorted(study.best_trials, key=lambda t: sign * t.values[0]) if spec.multi else [study.best_trial]
    run_ids = {t.number: t.user_attrs.get("ttclab.run_id") for t in complete}
    summary = _summary(spec, study, best, run_ids)
    top = best[0]
    top_run = run_ids.get(top.number)
    base = baseline_value(spec.objective[0].metric, ctx.tracker.metrics(top_run) if top_run else {})
    summary["baseline"] = {"value": base, "verdict": versus_baseline(spec, complete, base)}
    say(f"[sweep {spec.name}] best trial {top.number}: "
        + ", ".join(f"{o.metric}={v:.4g}" for o, v in zip(spec.objective, top.values))
        + f" with {json.dumps(top.params)}" + (f"; Pareto front of {len(best)}" if spec.multi else ""))
    say(f"[sweep {spec.name}] {summary['baseline']['verdict']}")
    for t in best[1:] if spec.multi else ():
        say(f"[sweep {spec.name}]   Pareto front: trial {t.number} "
            + ", ".join(f"{o.metric}={v:.4g}" for o, v in zip(spec.objective, t.values)) + f" with {json.dumps(t.params)}")
    finished = str(sum(summary["trials"].values()))
    if ctx.tracker.run_info(parent.id).data.tags.get("ttclab.sweep.reported") == finished:
        return summary  # a resumed sweep with nothing left to run: already logged
    parent.log({"best/trial": top.number, **{f"best/{o.metric}": v for o, v in zip(spec.objective, top.values)},
                **{f"trials/{k}": v for k, v in summary["trials"].items()},
                **({"pareto/size": len(best)} if spec.multi else {}),
                **({f"baseline/{spec.objective[0].metric}": base} if base is not None else {})})
    parent.tags({"ttclab.sweep.vs_baseline": summary["baseline"]["verdict"]})
    parent.tags({f"best.{k}": v for k, v in top.params.items()})
    parent.text(json.dumps(summary, indent=2, default=str), "best_trial.json")
    for name, fig in _figures(spec, study, len(complete)).items():
        parent.text(to_html(fig), f"figures/optuna_{name}.html")
    _test_rerun(spec, top, run_ids.get(top.number), parent, ctx, say)
    parent.tags({"ttclab.sweep.reported": finished})
    parent.flush()
    return summary


def _test_rerun(spec: SweepSpec, best, best_run: str | None, parent, ctx: Context, say) -> None:
    if spec.split_key is None:
        say(f"[sweep {spec.name}] stage {spec.stage!r} has no split key: no test re-run "
            "(its metrics name their split)")
        return
    tracker = ctx.tracker
    if tracker.run_info(parent.id).data.tags.get("ttclab.sweep.tested") == str(best.number):
        say(f"[sweep {spec.name}] trial {best.number} was already re-run on test")
        return
    if best_run:
        split = spec.split
        parent.log({f"{split}/{k.removeprefix(split + '/')}": v for k, v in tracker.metrics(best_run).items()})
    say(f"[sweep {spec.name}] re-running trial {best.number}'s config on the test split")
    run_id, _ = ctx.run(spec.stage, spec.config(best.params, split="test"),
                        tags={"ttclab.trial": f"test-of-{best.number}", "ttclab.sweep.role": "test"})
    test = {k.removeprefix("test/"): v for k, v in tracker.metrics(run_id).items()}
    parent.log({f"test/{k}": v for k, v in test.items()})
    parent.tags({"ttclab.sweep.tested": best.number, "ttclab.sweep.test_run": run_id})
    shown = [o.metric for o in spec.objective if o.metric in test]
    say(f"[sweep {spec.name}] test: " + ", ".join(f"{k}={test[k]:.4g}" for k in shown) + f" (run {run_id})")
