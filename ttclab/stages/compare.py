"""Stage `compare`: the side-by-side table of the newest ttc run per selector (and projection flag)
that share one comparison key (same data, operator, sampler, N, K, split)."""

from __future__ import annotations

import csv
import re

import numpy as np

from ..config import ConfigError
from ..tracking.compare_figures import Series, dashboard
from . import stage
from ..rewards import selector_names
from .ttc import comparison_key


def _row_name(tags) -> str:
    name = tags.get("ttclab.selector", "?")
    return name + ("+proj" if tags.get("ttclab.projection") == "true" else "")


def collect(tracker, cfg) -> list[tuple[str, str, dict]]:
    """[(row name, run id, metrics)] newest first per row, in the selectors' rank order
    (rewards/__init__.py; projection rows after)."""
    runs = tracker.runs({"ttclab.stage": "ttc", "ttclab.project": cfg.name,
                         "ttclab.compare_key": comparison_key(cfg)}, status="FINISHED")
    newest = {}
    for r in runs:  # newest first
        newest.setdefault(_row_name(r.data.tags), (r.info.run_id, dict(r.data.metrics)))
    rank = {name: i for i, name in enumerate(selector_names())}
    keys = sorted(newest, key=lambda n: (n.endswith("+proj"), rank.get(n.split("+")[0], 99)))
    return [(k, *newest[k]) for k in keys]


def series(tracker, rows, names: dict[str, str]) -> list[Series]:
    """The dashboard's data of each compared run: its step curves, per-IC SampleGain and drifts."""
    out = []
    for _, run_id, m in rows:
        per_ic = tracker.artifact_dir(run_id) / "per_ic.csv"
        table = list(csv.DictReader(per_ic.open())) if per_ic.exists() else []
        drift: dict[str, list] = {}
        for col in table[0] if table else ():
            found = re.fullmatch(r"drift_(\w+)_h(\d+)", col)
            if found:
                mean = float(np.mean([float(r[col]) for r in table]))
                drift.setdefault(found[1], []).append((int(found[2]), mean))
        final = max((int(k.rsplit("h", 1)[1]) for k in m if k.startswith("rollout_mse/h")), default=0)
        out.append(Series(names[run_id], tracker.history(run_id, "rollout_mse"), tracker.history(run_id, "rollout_nrmse"),
                          np.array([float(r["sample_gain"]) for r in table]), drift,
                          m.get(f"rollout_mse/h{final}", float("nan")), m.get("cost/model_evals", float("nan"))))
    return out


def choices(tracker, cfg, rows) -> list[str]:
    """One line per row chosen among several finished runs: which run was used and the params in
    which the candidates differ (none: plain reruns), so a rerun under other settings never
    replaces a row silently. Runs sharing a comparison key agree on every config section, so what
    can differ is the runtime (device) or how they were started (a sweep parent)."""
    runs = tracker.runs({"ttclab.stage": "ttc", "ttclab.project": cfg.name,
                         "ttclab.compare_key": comparison_key(cfg)}, status="FINISHED")
    used = {run_id for _, run_id, _ in rows}
    notes = []
    for name, run_id, _ in rows:
        group = [r for r in runs if _row_name(r.data.tags) == name]
        if len(group) < 2:
            continue
        seen = [{**r.data.params, "parent run": r.data.tags.get("mlflow.parentRunId", "-")} for r in group]
        differ = sorted(k for k in set().union(*seen) if len({s.get(k) for s in seen}) > 1)
        what = ", ".join(f"{k} ({' | '.join(dict.fromkeys(str(s.get(k)) for s in seen))})" for k in differ[:6])
        chosen = next(r for r in group if r.info.run_id in used)
        notes.append(f"{name}: {len(group)} finished runs share this key; using the newest, "
                     f"{chosen.info.run_name} ({run_id}); they differ in {what or 'nothing (reruns)'}")
    return notes


def table(rows: list[tuple[str, str, dict]]) -> tuple[list[str], list[list[str]]]:
    if not rows:
        return [], []
    horizons = sorted({int(k.rsplit("h", 1)[1]) for _, _, m in rows for k in m if k.startswith("rollout_nrmse/h")})
    final = horizons[-1]
    header = (["selector"] + [f"nRMSE h{h}" for h in horizons] + [f"MSE h{final}"]
              + ["drift mass", "drift momentum", "drift energy", "SampleGain mean %", "median %", "improved",
                 "Spearman", "model evals/IC", "wall s"])
    body = []
    for name, _, m in rows:
        def f(key, fmt="{:.3e}"):
            return fmt.format(m[key]) if key in m else "-"
        body.append([name] + [f(f"rollout_nrmse/h{h}", "{:.4f}") for h in horizons] + [f(f"rollout_mse/h{final}")]
                    + [f(f"conservation/{q}/h{final}", "{:.1e}") for q in ("mass", "momentum", "energy")]
                    + [f("sample_gain/mean", "{:+.1f}"), f("sample_gain/median", "{:+.1f}"),
                       f("sample_gain/improved_frac", "{:.0%}"), f("reward/spearman", "{:+.3f}"),
                       f("cost/model_evals", "{:.0f}"), f("cost/wall_s", "{:.1f}")])
    return header, body


def markdown(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


@stage("compare", key=("problem", "data", "model", "train", "seed", "sampling", "triplets", "prm", "ttc", "arm"),
       run_name=lambda cfg: f"compare · {comparison_key(cfg)}")
def compare(cfg, ctx, run):
    """Side-by-side table of the latest ttc runs per selector (printed and logged as artifacts)."""
    rows = collect(ctx.tracker, cfg)
    if not rows:
        raise ConfigError(f"no finished ttc runs for project {cfg.name!r} with this config yet; "
                         f"run `ttclab ttc` (or `ttclab demo`) first")
    header, body = table(rows)
    names = {r: ctx.tracker.run_info(r).info.run_name for _, r, _ in rows}
    header, body = header + ["run"], [line + [names[r]] for line, (_, r, _) in zip(body, rows)]
    notes = choices(ctx.tracker, cfg, rows)
    text = markdown(header, body) + "".join(f"\n- {n}" for n in notes) + ("\n" if notes else "")
    run.text(text, "compare.md")
    run.text(dashboard(header, body, series(ctx.tracker, rows, names),
                       f"ttclab/{cfg.name}: TTC comparison ({cfg.ttc.split} split)"), "figures/compare.html")
    run.tags({"ttclab.compared_runs": ",".join(r for _, r, _ in rows),
              "ttclab.compared_names": " | ".join(names.values())[:5000]})
    print(f"\nTTC comparison, {cfg.name}, {cfg.ttc.split} split, N={cfg.ttc.branching}, K={cfg.ttc.beam}, "
          f"sampler {cfg.sampling.sampler}:\n\n{text}")
    return {"table": text}
