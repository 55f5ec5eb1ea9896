"""The `trc` stage end to end in a temporary MLflow store: data run reused, metrics, tags, artifacts."""

from __future__ import annotations

import pytest
from test_stages import assert_reads_match_declaration, record_inputs

from ttclab.config import ConfigError
from ttclab.project import load_project
from ttclab.stages import Context
from ttclab.tracking.store import Tracker
from ttclab.training.trc import load_controller

TINY = ["problem.n_train=48", "problem.n_val=16", "problem.n_test=24", "model.latent=16", "model.layers=1",
        "model.H_cycles=2", "model.L_cycles=1", "trc.epochs=2", "trc.batch_size=16"]


def test_trc_stage_logs_metrics_tags_figures_and_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("TTCLAB_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    tracker = Tracker("sqlite:///" + str(tmp_path / "m.db"))
    ctx = Context(tracker, progress=False)
    needed, read = record_inputs(monkeypatch)
    runs = {}
    for method, weight in (("bc", 0.0), ("ps", 1.0)):
        extra = ["trc.test_time=best_of_n", "trc.test_n=3"] if weight else ["model.halting=act", "model.max_H_cycles=3"]
        cfg = load_project("projects/double_integrator.yaml", TINY + [f"trc.process_weight={weight}"] + extra)
        runs[method], outputs = ctx.run("trc", cfg)
        assert 0 <= outputs["trc/success_rate"] <= 1
        if method == "bc":  # adaptive halting beside the same controller run for all its cycles
            halting = outputs
            with pytest.raises(ConfigError, match=r"model.halting=act needs trc.halt_weight > 0"):
                ctx.run("trc", load_project("projects/double_integrator.yaml", TINY + extra + ["trc.halt_weight=0"]))
    assert halting["trc/halting/fixed/cycles"] == 3 and 0 <= halting["trc/halting/adaptive/cycles"] <= 3
    assert halting["trc/halting/fixed/cost_gap_pct"] == halting["trc/cost_gap_pct"]
    assert halting["trc/halting/compute_saved_pct"] == pytest.approx(100 * (1 - halting["trc/halting/adaptive/cycles"] / 3))
    # best_of_n logs every verifier at the same N beside the plain controller; the oracle pick is never costlier.
    tt = {k.removeprefix("trc/test_time/"): v for k, v in outputs.items() if k.startswith("trc/test_time/")}
    assert tt["plain/cost_gap_pct"] == outputs["trc/cost_gap_pct"] and tt["plain/cycles"] == 2
    assert all(tt[f"{v}/cycles"] == 6 for v in ("value", "oracle", "random"))
    assert tt["oracle/cost_gap_pct"] <= tt["plain/cost_gap_pct"] and tt["cost_gap_pct"] == tt["value/cost_gap_pct"]

    exp = tracker.client.get_experiment_by_name("ttclab/double_integrator")
    finished = [r for r in tracker.client.search_runs([exp.experiment_id]) if r.info.status == "FINISHED"]
    assert sorted(r.data.tags["ttclab.stage"] for r in finished) == ["trc", "trc", "trc_data"]  # data made once
    assert_reads_match_declaration(needed, read)
    assert read == {"trc": {"data"}}
    for method, run_id in runs.items():
        run = tracker.client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["ttclab.method"] == method and run.data.tags["ttclab.split"] == "test"
        m = run.data.metrics
        for key in ("trc/success_rate", "trc/final_error_mean", "trc/final_error_median", "trc/cost_gap_pct",
                    "trc/monotonic_frac", "trc/teacher/success_rate", "trc/teacher/cost_mean",
                    "trc/teacher/clip_rate", "model/n_params", "val/loss", "trc/refine/cost_mean"):
            assert key in m, key
        assert m["trc/teacher/success_rate"] == 1.0 and m["trc/teacher/final_error_mean"] < 1e-9
        assert run.data.params["trc.process_weight"] == ("0.0" if method == "bc" else "1.0")
        history = tracker.client.get_metric_history(run_id, "trc/refine/cost_mean")
        assert sorted(p.step for p in history) == list(range(4 if method == "bc" else 3))  # first guess + cycles
        art = tracker.artifact_dir(run_id)
        for name in ("refinement", "trajectories"):
            html = (art / "figures" / f"{name}.html").read_text()
            assert '<script charset="utf-8" src="plotly.min.js">' in html and "https://cdn" not in html
        assert (art / "figures" / "plotly.min.js").stat().st_size > 1e6  # one copy beside them: offline
        assert len((art / "per_problem.csv").read_text().splitlines()) == 1 + 24
        model, problem = load_controller(art / "model" / "trc.pt")
        x = [problem.uniform(3, None).float()] * 2
        assert problem.name == "double_integrator" and len(model(*x).controls) == (4 if method == "bc" else 3)
