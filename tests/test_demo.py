"""End-to-end smoke run of the whole demo on tiny data: every stage, every selector, the table."""

from __future__ import annotations

import csv
import io
import math

import pytest

from test_stages import assert_reads_match_declaration, record_inputs

from ttclab.stages import Context
from ttclab.tracking.store import Tracker

SELECTOR_ROWS = {"baseline", "random", "ensemble", "arm", "prm", "oracle", "baseline+proj", "arm+proj", "prm+proj"}


@pytest.mark.slow
def test_demo_runs_every_stage_and_compares_every_selector(tmp_path, monkeypatch, tracking_store_in, tiny_project):
    tracker = Tracker(tracking_store_in(monkeypatch, tmp_path))
    cfg = tiny_project("euler1d", "data.n_trajectories=16", "train.epochs=1", "triplets.k=4",
                       "triplets.fraction=0.5", "prm.width=8", "prm.layers=2", "prm.epochs=1", "prm.set_size=3",
                       "ttc.branching=3")
    needed, read = record_inputs(monkeypatch)
    demo_id, out = Context(tracker, progress=False).run("demo", cfg)
    # Each stage read through ctx.input exactly the inputs its declaration says this config needs.
    assert set(needed) == {"generate", "train", "build_prm", "train_prm", "ttc", "compare", "demo"}
    assert_reads_match_declaration(needed, read)

    exp = tracker.client.get_experiment_by_name("ttclab/euler1d")
    runs = tracker.client.search_runs([exp.experiment_id])
    assert all(r.info.status == "FINISHED" for r in runs)
    stages = [r.data.tags["ttclab.stage"] for r in runs]
    for stage in ("generate", "train", "build_prm", "train_prm", "compare", "demo"):
        assert stages.count(stage) == 1, stage
    ttc_runs = [r for r in runs if r.data.tags["ttclab.stage"] == "ttc"]
    assert len(ttc_runs) == 9
    assert all(r.data.tags["mlflow.parentRunId"] == demo_id for r in ttc_runs)

    final = cfg.problem.n_snapshots - 1
    by_row = {}
    for r in ttc_runs:
        name = r.data.tags["ttclab.selector"] + ("+proj" if r.data.tags["ttclab.projection"] == "true" else "")
        by_row[name] = r
        m = r.data.metrics
        for key in (f"rollout_mse/h{final}", "rollout_nrmse/h1", f"conservation/mass/h{final}",
                    "sample_gain/mean", "cost/model_evals", "cost/wall_s"):
            assert math.isfinite(m[key]), (name, key)
        assert m["cost/model_evals"] >= final  # at least one forward pass per step and IC
    assert set(by_row) == SELECTOR_ROWS
    # The baseline is its own SampleGain reference; projection makes mass drift round-off small.
    assert by_row["baseline"].data.metrics["sample_gain/mean"] == 0.0
    assert by_row["baseline+proj"].data.metrics[f"conservation/mass/h{final}"] < 1e-5
    # Every selector run carries the same baseline and the oracle pick is never worse than random.
    base = {r.data.metrics[f"control/baseline/rollout_mse/h{final}"] for r in ttc_runs}
    assert len(base) == 1
    arm = by_row["arm"].data.metrics
    assert arm[f"control/oracle/rollout_mse/h{final}"] <= arm[f"control/random/rollout_mse/h{final}"]

    arm_dir = tracker.artifact_dir(by_row["arm"].info.run_id)
    rows = list(csv.DictReader(io.StringIO((arm_dir / "per_ic.csv").read_text())))
    assert len(rows) == int(arm["ttc/n_ics"]) and "sample_gain" in rows[0]
    for fig in ("rollout_mse", "conservation", "sample_gain", "example"):
        assert (arm_dir / "figures" / f"{fig}.html").stat().st_size > 1000
    table = out["table"]
    assert all(f"| {row} |" in table for row in SELECTOR_ROWS)
