"""Stage `compare`: the side-by-side table of the newest ttc run per selector (and projection flag)
that share one comparison key (same data, operator, sampler, N, K, split); with
`compare.across: operators`, of the ttc runs of every project evaluated on the same held-out ICs
(stages/compare_operators.py), a row per operator set-up and selector. An ensemble comparison also
shows its best single member: a row per projection flag and every row's gain over it."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import replace

import numpy as np

from ..config import ConfigError
from ..tracking.compare_figures import Series, dashboard
from . import STAGES, stage
from .common import CALIBRATION_ARTIFACT
from ..rewards import selector_names
from .ttc import comparison_key


def row_name(tags) -> str:
    name = tags.get("ttclab.selector", "?")
    return name + ("+proj" if tags.get("ttclab.projection") == "true" else "")


def candidate_seed(run) -> str:
    return run.data.params.get("sampling.seed", "?")


def evaluation(params: dict[str, str]) -> dict[str, str]:
    """What fixes a ttc run's held-out ICs and their truth, from its MLflow params: the problem and
    data sections (the data file), the split, how many of its ICs and the horizons reported."""
    return {k: v for k, v in params.items() if k.startswith(("problem.", "data."))
            or k in ("ttc.split", "ttc.n_ics", "ttc.horizons")}


def logged_params(cfg) -> dict[str, str]:
    """cfg's params as a run of it logs them (`Run.params`: each value's text)."""
    return {k: str(v)[:6000] for k, v in cfg.flat().items()}


def evaluation_key(cfg) -> str:
    """A short hash of cfg's `evaluation`."""
    return hashlib.sha1(json.dumps(evaluation(logged_params(cfg)), sort_keys=True).encode()).hexdigest()[:12]


def aggregate(per_seed: list[dict]) -> dict:
    """Metrics of one row's runs, one per candidate seed -> their mean per key, `<key>/se` the
    standard error across seeds (std / sqrt(n), 0 for one seed) and `seeds/n`."""
    out = {"seeds/n": float(len(per_seed))}
    for k in set().union(*per_seed):
        v = np.array([m[k] for m in per_seed if k in m], dtype=float)
        out[k] = float(v.mean())
        out[f"{k}/se"] = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0
    return out


def collect(tracker, cfg) -> list[tuple[str, str, dict, list[str]]]:
    """[(row name, newest run id, metrics aggregated over candidate seeds, the run id of every seed)]
    in the selectors' rank order (rewards/__init__.py; projection rows after); per row and seed the
    newest finished run."""
    runs = tracker.runs({"ttclab.stage": "ttc", "ttclab.project": cfg.name,
                         "ttclab.compare_key": comparison_key(cfg)}, status="FINISHED")
    newest: dict[str, dict[str, tuple[str, dict]]] = {}
    for r in runs:  # newest first
        seeds = newest.setdefault(row_name(r.data.tags), {})
        seeds.setdefault(candidate_seed(r), (r.info.run_id, dict(r.data.metrics)))
    rank = {name: i for i, name in enumerate(selector_names())}
    keys = sorted(newest, key=lambda n: (n.endswith("+proj"), rank.get(n.split("+")[0], 99)))
    return [(k, next(iter(newest[k].values()))[0], aggregate([m for _, m in newest[k].values()]),
             [r for r, _ in newest[k].values()]) for k in keys]


def series(tracker, cfg, rows, names: dict[str, str]) -> list[Series]:
    """The dashboard's data of each compared run: its step curves, per-IC SampleGain, drifts and,
    for a PRM row, its PRM's reliability buckets (cfg None: none, the rows' configs are not cfg)."""
    out = []
    for name, run_id, m, _ in rows:
        per_ic = tracker.artifact_dir(run_id) / "per_ic.csv"
        table = list(csv.DictReader(per_ic.open())) if per_ic.exists() else []
        drift: dict[str, list] = {}
        for col in table[0] if table else ():
            found = re.fullmatch(r"drift_(\w+)_h(\d+)", col)
            if found:
                mean = float(np.mean([float(r[col]) for r in table]))
                drift.setdefault(found[1], []).append((int(found[2]), mean))
        final = max((int(f[1]) for k in m if (f := re.fullmatch(r"rollout_mse/h(\d+)", k))), default=0)
        out.append(Series(names[run_id], tracker.history(run_id, "rollout_mse"), tracker.history(run_id, "rollout_nrmse"),
                          np.array([float(r["sample_gain"]) for r in table]), drift,
                          m.get(f"rollout_mse/h{final}", float("nan")), m.get("cost/model_evals", float("nan")),
                          *(prm_calibration(tracker, cfg, run_id) if cfg is not None and name.split("+")[0] == "prm"
                            else (None, ""))))
    return out


def prm_calibration(tracker, cfg, run_id: str) -> tuple[dict | None, str]:
    """(held-out reliability buckets, PRM run name) of the PRM a prm row's run read: the newest
    finished train_prm run with that run's PRM key (its candidate seed feeds the triplets) that
    ended before the run did, i.e. what its get-or-run found or ran inside it. An explicit --input
    prm=... is not traced; a PRM run from before the buckets were logged gives (None, its name)."""
    ttc_run = tracker.run_info(run_id)
    seeded = replace(cfg, sampling=replace(cfg.sampling, seed=int(ttc_run.data.params.get("sampling.seed",
                                                                                            cfg.sampling.seed))))
    prms = tracker.runs({"ttclab.stage": "train_prm", "ttclab.project": cfg.name,
                         "ttclab.key": seeded.key(*STAGES.get("train_prm").key)}, status="FINISHED")
    for prm in prms:  # newest first
        if prm.info.end_time <= ttc_run.info.end_time:
            path = tracker.artifact_dir(prm.info.run_id) / CALIBRATION_ARTIFACT
            return (json.loads(path.read_text()) if path.exists() else None), prm.info.run_name
    return None, ""


def choices(tracker, cfg, rows) -> list[str]:
    """One line per row chosen among several finished runs: which run was used and the params in
    which the candidates differ (none: plain reruns), so a rerun under other settings never
    replaces a row silently. Runs sharing a comparison key agree on every config section, so what
    can differ is the runtime (device) or how they were started (a sweep parent)."""
    runs = tracker.runs({"ttclab.stage": "ttc", "ttclab.project": cfg.name,
                         "ttclab.compare_key": comparison_key(cfg)}, status="FINISHED")
    used = {run_id for _, run_id, _, _ in rows}
    notes = []
    for name, run_id, _, _ in rows:
        chosen_seed = next(candidate_seed(r) for r in runs if r.info.run_id == run_id)
        group = [r for r in runs if row_name(r.data.tags) == name and candidate_seed(r) == chosen_seed]
        if len(group) < 2:
            continue
        seen = [{**r.data.params, "parent run": r.data.tags.get("mlflow.parentRunId", "-")} for r in group]
        differ = sorted(k for k in set().union(*seen) if len({s.get(k) for s in seen}) > 1)
        what = ", ".join(f"{k} ({' | '.join(dict.fromkeys(str(s.get(k)) for s in seen))})" for k in differ[:6])
        chosen = next(r for r in group if r.info.run_id in used)
        notes.append(f"{name}: {len(group)} finished runs share this key; using the newest, "
                     f"{chosen.info.run_name} ({run_id}); they differ in {what or 'nothing (reruns)'}")
    return notes


def interval(m: dict, key: str = "sample_gain") -> tuple[float, float] | None:
    """The 95% interval of gain `key` that "within noise" reads. One seed: the run's paired bootstrap
    interval over ICs. Several: the union of mean +- 1.96 s.e. across seeds and the seeds' mean
    bootstrap interval, because candidates that do not depend on the seed (a noise-free ensemble's
    ARM or oracle) give s.e. 0 while the ICs still scatter; the mean of the seeds' bounds is about as
    wide as, or wider than, the bootstrap of their mean gain. None: neither was logged."""
    spans = []
    if m.get("seeds/n", 1) > 1 and f"{key}/mean/se" in m:
        mid, half = m[f"{key}/mean"], 1.96 * m[f"{key}/mean/se"]
        spans.append((mid - half, mid + half))
    if f"{key}/ci_lo" in m:
        spans.append((m[f"{key}/ci_lo"], m[f"{key}/ci_hi"]))
    return (min(lo for lo, _ in spans), max(hi for _, hi in spans)) if spans else None


def within_noise(m: dict, key: str = "sample_gain") -> bool:
    """`interval(m, key)` includes 0 (no interval logged: nothing shows it is not noise)."""
    span = interval(m, key)
    return span is None or span[0] <= 0.0 <= span[1]


def best_member(m: dict, final: int) -> int | None:
    """The ensemble member whose own rollout (`control/member<i>`, under the row's projection flag)
    has the lowest final-step MSE, mean over the row's seeds; None for runs without member controls
    (not an ensemble, or logged before member 0 was one of them)."""
    mse = {int(found[1]): v for k, v in m.items()
           if (found := re.fullmatch(rf"control/member(\d+)/rollout_mse/h{final}", k))}
    return min(mse, key=mse.get) if 0 in mse else None


def with_best_members(rows: list[tuple], final: int) -> list[tuple]:
    """`rows` with a row `best member (member<i>)` after the first row of each projection flag
    (`...+proj` for the projected members): the best single member's final MSE and SampleGain over
    the baseline, from the member controls every ensemble run logs, and its one forward pass per
    step. It is no run of its own: run id "" and no seeds' runs."""
    out, done = [], set()
    for row in rows:
        out.append(row)
        proj, m = row[0].endswith("+proj"), row[2]
        i = best_member(m, final)
        if i is None or proj in done:
            continue
        done.add(proj)
        c = f"control/member{i}"
        member = {"seeds/n": m["seeds/n"], "cost/forward_per_step": 1.0}  # deterministic: one pass per step
        kept = tuple(f"{c}/{k}" for k in (f"rollout_mse/h{final}", "sample_gain/mean", "sample_gain/improved_frac"))
        member |= {k.removeprefix(c + "/"): v for k, v in m.items() if k.startswith(kept)}  # with their /se
        out.append((f"best member (member{i}){'+proj' if proj else ''}", "", member, []))
    return out


def reported_horizons(rows) -> list[int]:
    return sorted({int(k.rsplit("h", 1)[1]) for _, _, m, _ in rows for k in m
                   if k.startswith("rollout_nrmse/h") and not k.endswith("/se")})


def table(rows: list[tuple[str, str, dict, list[str]]]) -> tuple[list[str], list[list[str]]]:
    """The comparison's header and rows (strings): per row errors at every horizon, final MSE
    (mean +- s.e. over candidate seeds), drifts, SampleGain with its interval and within-noise
    flag, gain over the random pick, the ensemble mean and (ensembles) the best single member,
    compute per IC, and the cost of each run: the search's wall time, the whole run's (`cost/run_s`,
    controls included) and its peak resident memory (`cost/peak_rss_mb`); `Context.run` logs both
    for every stage run, upstream runs made inside it left out."""
    if not rows:
        return [], []
    horizons = reported_horizons(rows)
    final = horizons[-1]
    header = (["selector", "seeds"] + [f"nRMSE h{h}" for h in horizons] + [f"MSE h{final}", f"cRMSE h{final}"]
              + ["drift mass", "drift momentum", "drift energy", "SampleGain mean %", "95% CI", "within noise",
                 "vs random %", "vs ens. mean %", "vs best member %", "improved", "Spearman", "fwd/IC/step",
                 "model evals/IC", "reward evals/IC", "wall s", "run s", "peak RSS MB"])
    body = []
    for name, _, m, runs in rows:
        def f(key, fmt="{:.3e}"):
            if key not in m:
                return "-"
            se = m.get(f"{key}/se", 0.0)
            return fmt.format(m[key]) + (f" ± {fmt.format(se).lstrip('+')}" if m["seeds/n"] > 1 else "")

        span = interval(m) if runs else None  # a row that is no run (best member) has no interval over ICs

        def vs(ref):
            key = f"gain_vs/{ref}"
            if f"{key}/mean" not in m:
                return "-"
            return f"{m[key + '/mean']:+.1f}{' (noise)' if within_noise(m, key) else ''}"

        def drift(q):
            # 2D runs log momentum per axis (momentum_x, momentum_y): the column shows the larger.
            keys = [f"conservation/{k}/h{final}" for k in (q, f"{q}_x", f"{q}_y") if f"conservation/{k}/h{final}" in m]
            return f(max(keys, key=m.get), "{:.1e}") if keys else "-"

        ci = "-" if span is None else f"[{span[0]:+.1f}, {span[1]:+.1f}]"
        noise = "-" if span is None else ("yes" if span[0] <= 0.0 <= span[1] else "no")
        best = best_member(m, final)
        body.append([name, f"{m['seeds/n']:.0f}"] + [f(f"rollout_nrmse/h{h}", "{:.4f}") for h in horizons]
                    + [f(f"rollout_mse/h{final}"), f(f"rollout_crmse/h{final}", "{:.1e}")]
                    + [drift(q) for q in ("mass", "momentum", "energy")]
                    + [f("sample_gain/mean", "{:+.1f}"), ci, noise, vs("random"), vs("ensemble"),
                       "-" if best is None else vs(f"member{best}"),
                       f("sample_gain/improved_frac", "{:.0%}"), f("reward/spearman", "{:+.3f}"),
                       f("cost/forward_per_step", "{:.1f}"), f("cost/model_evals", "{:.0f}"),
                       f("cost/reward_evals", "{:.0f}"), f("cost/wall_s", "{:.1f}"), f("cost/run_s", "{:.1f}"),
                       f("cost/peak_rss_mb", "{:.0f}")])
    return header, body


def markdown(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def publish(run, header, body, rows, names: dict[str, str], notes: list[str], figures: list[Series], title: str) -> str:
    """Log the table (`compare.md`, with notes), the dashboard and the compared runs' tags -> the text."""
    text = markdown(header, body) + "".join(f"\n- {n}" for n in notes) + ("\n" if notes else "")
    run.text(text, "compare.md")
    run.text(dashboard(header, body, figures, title), "figures/compare.html")
    # Every seed's run that fed a row, so a reader can open each of them (the table shows the newest).
    run.tags({"ttclab.compared_runs": ",".join(r for *_, seeds in rows for r in seeds),
              "ttclab.compared_names": " | ".join(names.values())[:5000]})
    return text


@stage("compare", key=("problem", "data", "model", "train", "seed", "sampling", "triplets", "prm", "ttc", "arm"),
       run_name=lambda cfg: (f"compare · operators · {evaluation_key(cfg)}" if cfg.compare.across == "operators"
                             else f"compare · {comparison_key(cfg)}"))
def compare(cfg, ctx, run):
    """Side-by-side table of the latest ttc runs per selector (printed and logged as artifacts)."""
    if cfg.compare.across == "operators":
        from .compare_operators import across_operators  # it builds on this module's table machinery

        return across_operators(cfg, ctx, run)
    rows = collect(ctx.tracker, cfg)
    if not rows:
        raise ConfigError(f"no finished ttc runs for project {cfg.name!r} with this config yet; "
                         f"run `ttclab ttc` (or `ttclab demo`) first")
    shown = with_best_members(rows, reported_horizons(rows)[-1])
    header, body = table(shown)
    names = {r: ctx.tracker.run_info(r).info.run_name for _, r, _, _ in rows}
    header, body = header + ["run"], [line + [names.get(r, "member controls of the runs")]
                                      for line, (_, r, _, _) in zip(body, shown)]
    text = publish(run, header, body, rows, names, choices(ctx.tracker, cfg, rows),
                   series(ctx.tracker, cfg, rows, names), f"ttclab/{cfg.name}: TTC comparison ({cfg.ttc.split} split)")
    print(f"\nTTC comparison, {cfg.name}, {cfg.ttc.split} split, N={cfg.ttc.branching}, K={cfg.ttc.beam}, "
          f"sampler {cfg.sampling.sampler}:\n\n{text}")
    return {"table": text}
