"""`ttclab compare PROJECT --set compare.across=operators`: one table of the ttc runs of every
project whose evaluation is this project's (same problem and data sections, ttc.split, ttc.n_ics
and horizons: the same held-out ICs and truth), so FNO, UPT and UPT trained with inverse losses,
each with its selectors, are compared on equal terms.

A row is (project, model.type, train.loss, ttc.rollout, selector, projection flag). Its runs are
those sharing the comparison key of the row's newest run (so N, K, sampler and training agree),
newest per candidate seed, aggregated over seeds by `compare.aggregate`; the other settings' runs
are left out and counted in a note. SampleGain is against each row's own baseline (its operator's
deterministic rollout), gain vs random against the same operator's random pick. The operator's
parameter count and training time come from its train run (`operator_costs`).
"""

from __future__ import annotations

from ..config import ConfigError
from ..rewards import selector_names
from . import STAGES
from .compare import aggregate, candidate_seed, evaluation, logged_params, publish, row_name, series, table


def setup(r) -> tuple[str, str, str, str]:
    """(project, operator, training loss, rollout) of a ttc run; runs from before train.loss or
    ttc.rollout existed ran the defaults."""
    p = r.data.params
    return (r.data.tags.get("ttclab.project", "?"), p.get("model.type", "?"), p.get("train.loss", "unrolled_mse"),
            r.data.tags.get("ttclab.rollout", p.get("ttc.rollout", "physical")))


def collect(tracker, cfg) -> tuple[list[tuple], list[tuple], list[str]]:
    """([(project, operator, loss, rollout)] per row, rows as `compare.collect` gives them, notes):
    cfg's own project first, then by project, operator, loss, rollout; within one set-up the
    selectors in rank order, projection rows after."""
    want = evaluation(logged_params(cfg))
    runs = [r for r in tracker.runs({"ttclab.stage": "ttc", "ttclab.split": cfg.ttc.split}, status="FINISHED")
            if evaluation(r.data.params) == want]
    groups: dict[tuple, list] = {}
    for r in runs:  # newest first
        groups.setdefault((*setup(r), row_name(r.data.tags)), []).append(r)
    rank = {name: i for i, name in enumerate(selector_names())}
    order = sorted(groups, key=lambda g: (g[0] != cfg.name, *g[:4], g[4].endswith("+proj"),
                                          rank.get(g[4].split("+")[0], 99)))
    setups, rows, notes = [], [], []
    for g in order:
        key = groups[g][0].data.tags.get("ttclab.compare_key")
        newest: dict[str, object] = {}
        for r in groups[g]:
            if r.data.tags.get("ttclab.compare_key") == key:
                newest.setdefault(candidate_seed(r), r)
        chosen = list(newest.values())
        setups.append(g[:4])
        rows.append((g[4], chosen[0].info.run_id, aggregate([dict(r.data.metrics) for r in chosen]),
                     [r.info.run_id for r in chosen]))
        left = len(groups[g]) - sum(r.data.tags.get("ttclab.compare_key") == key for r in groups[g])
        if left:
            notes.append(f"{' · '.join(g)}: {left} finished run(s) under other settings (N, K, sampler, training...) "
                         f"left out; the row holds the newest run's settings, {chosen[0].info.run_name} "
                         f"({chosen[0].info.run_id})")
    return setups, rows, notes


def operator_costs(ttc_run, trains: list) -> dict[str, float]:
    """`model/n_params` and `train/wall_s` of the train run whose operator a ttc run read: the newest
    of `trains` (its project's finished train runs, newest first) that agrees with it on every param
    of the train key's sections and ended before it did (what its get-or-run found or ran). An
    explicit --input operator=... is not traced; with an ensemble sampler, member 0's."""
    sections = STAGES.get("train").key
    mine = {k: v for k, v in ttc_run.data.params.items() if k.split(".")[0] in sections}
    for r in trains:
        if r.info.end_time <= ttc_run.info.end_time and all(r.data.params.get(k) == v for k, v in mine.items()):
            return {k: r.data.metrics[k] for k in ("model/n_params", "train/wall_s") if k in r.data.metrics}
    return {}


def across_operators(cfg, ctx, run):
    """The operators table (printed and logged as `compare.md` and `figures/compare.html`)."""
    tracker = ctx.tracker
    setups, rows, notes = collect(tracker, cfg)
    if not rows:
        raise ConfigError(f"compare.across=operators: no finished ttc run of any project is evaluated like "
                          f"{cfg.name!r} (problem, data, ttc.split={cfg.ttc.split}, ttc.n_ics, ttc.horizons); "
                          f"run `ttclab ttc` first")
    header, body = table(rows)
    infos = {r: tracker.run_info(r) for _, r, _, _ in rows}
    # Labels that stay apart in the dashboard's legend: every operator's baseline run is "ttc · baseline · N5";
    # the run name adds selector, N, K, latent and +proj to project, operator and loss.
    names = {r: f"{s[0]}/{s[1]}/{s[2]}: {infos[r].info.run_name}" for s, (_, r, _, _) in zip(setups, rows)}
    header = ["project", "operator", "loss", "rollout"] + header + ["params", "train s", "run"]
    trains = {p: tracker.runs({"ttclab.stage": "train", "ttclab.project": p}, status="FINISHED")
              for p in dict.fromkeys(s[0] for s in setups)}
    lines = []
    for s, line, (_, r, _, _) in zip(setups, body, rows):
        cost = operator_costs(infos[r], trains[s[0]])
        lines.append(list(s) + line + [f"{cost['model/n_params']:.0f}" if "model/n_params" in cost else "-",
                                       f"{cost['train/wall_s']:.1f}" if "train/wall_s" in cost else "-",
                                       infos[r].info.run_name])
    text = publish(run, header, lines, rows, names, notes, series(tracker, None, rows, names),
                   f"ttclab/{cfg.name}: operators on the same {cfg.ttc.split} ICs")
    print(f"\nTTC comparison across operators, evaluated like {cfg.name} ({cfg.ttc.split} split):\n\n{text}")
    return {"table": text}
