"""The MLflow UI as a user meets it: run names, the variant tag, where a run really is. One tiny
pipeline (generate, train, two ttc runs, compare) on a module-wide store serves every check."""

from __future__ import annotations

import base64
import hashlib
import json
import re

import numpy as np
import pytest

from ttclab.stages import STAGES, Context
from ttclab.stages import compare as compare_stage
from ttclab.tracking import registry
from ttclab.tracking.store import Tracker


@pytest.fixture(scope="module")
def store(tmp_path_factory, tracking_store_in, tiny_project):
    with pytest.MonkeyPatch.context() as mp:
        tracker = Tracker(tracking_store_in(mp, tmp_path_factory.mktemp("ui")))
        cfg = tiny(tiny_project, "ttc.reward=baseline")
        ctx = Context(tracker, progress=False)
        ids = {"arm": ctx.run("ttc", tiny(tiny_project, "ttc.reward=arm", "ttc.project_conservation=true"))[0]}
        ids["baseline"] = ctx.run("ttc", cfg)[0]
        ids["prm"] = ctx.run("ttc", tiny(tiny_project, "ttc.reward=prm"))[0]  # trains a tiny PRM first
        ids["compare"] = ctx.run("compare", cfg)[0]
        yield tracker, cfg, ids


def tiny(tiny_project, *sets):
    return tiny_project("euler1d", "train.epochs=1", "ttc.branching=3", "triplets.k=4", "triplets.fraction=0.5",
                        "prm.width=8", "prm.layers=2", "prm.epochs=1", "prm.set_size=3", *sets)


def name(tracker, run_id):
    return tracker.run_info(run_id).info.run_name


def test_run_names_carry_the_settings_that_tell_runs_apart(store, tiny_project):
    tracker, cfg, ids = store
    assert name(tracker, ids["arm"]) == "ttc · arm · N3 · +proj"
    assert name(tracker, ids["baseline"]) == "ttc · baseline · N3"
    assert name(tracker, ids["compare"]).startswith("compare · ")
    (train,) = tracker.runs({"ttclab.stage": "train"})
    assert train.info.run_name == "train · fno · s0"
    beam = tiny_project("euler1d", "ttc.reward=prm", "ttc.beam=2", "ttc.branching=5")
    assert STAGES.get("ttc").name_for(beam, {}) == "ttc · prm · N5 · beam2"
    assert STAGES.get("ttc").name_for(beam, {"ttclab.trial": "7"}) == "trial 7"


def test_variant_tag_separates_projected_runs(store):
    tracker, cfg, ids = store
    tags = tracker.run_info(ids["arm"]).data.tags
    assert tags["ttclab.variant"] == f"arm+proj@{cfg.sampling.sampler}"
    assert tracker.run_info(ids["baseline"]).data.tags["ttclab.variant"] == f"baseline@{cfg.sampling.sampler}"


def test_where_names_the_experiment_the_run_is_really_in(store):
    tracker, cfg, ids = store
    assert tracker.where(ids["arm"], cfg.name) == "experiment ttclab/euler1d"
    default = tracker.client.create_run("0").info.run_id  # as `mlflow run` without --experiment-name
    where = tracker.where(default, cfg.name)
    assert where.startswith("experiment 'Default', not ttclab/euler1d") and "--experiment-name" in where


def test_operator_is_registered_and_resolves_through_an_alias(store):
    tracker, cfg, ids = store
    (train,) = tracker.runs({"ttclab.stage": "train"})
    run_id = train.info.run_id
    assert train.data.tags["ttclab.model_version"] == "ttclab-euler1d-operator/1"
    weights = tracker.artifact_dir(run_id) / "model" / "operator.pt"
    for uri in ("models:/ttclab-euler1d-operator@champion", "models:/ttclab-euler1d-operator/latest",
                "models:/ttclab-euler1d-operator/1"):
        assert tracker.resolve(uri, "operator.pt") == weights, uri
    # A second version: /latest follows it, @champion stays until a user moves it.
    assert tracker.register(cfg.name, "operator", ids["arm"]) == "2"
    assert registry.version_of(tracker, "models:/ttclab-euler1d-operator/latest").run_id == ids["arm"]
    assert tracker.resolve("models:/ttclab-euler1d-operator@champion", "operator.pt") == weights
    # The CLI path: --input operator=models:/...@champion runs ttc on the registered weights.
    ctx = Context(tracker, progress=False, inputs={"operator": "models:/ttclab-euler1d-operator@champion"})
    ctx.stage = "ttc"
    assert ctx.input("operator", cfg) == weights

def test_compare_names_its_runs_and_says_how_it_chose_among_them(store):
    tracker, cfg, ids = store
    tags = tracker.run_info(ids["compare"]).data.tags
    assert set(tags["ttclab.compared_runs"].split(",")) == {ids["arm"], ids["baseline"], ids["prm"]}
    table = (tracker.artifact_dir(ids["compare"]) / "compare.md").read_text()
    assert "ttc · arm · N3 · +proj" in table and "ttc · baseline · N3" in table
    # A second baseline run under another parent: compare keeps the newest and says what differs.
    again, _ = Context(tracker, progress=False, parent=ids["arm"]).run("ttc", cfg)
    rows = compare_stage.collect(tracker, cfg)
    assert dict((n, r) for n, r, _, _ in rows)["baseline"] == again
    (note,) = compare_stage.choices(tracker, cfg, rows)
    assert note.startswith("baseline: 2 finished runs") and f"parent run ({ids['arm']} | -)" in note


def test_runs_record_their_data_file_as_a_dataset_input(store):
    tracker, cfg, ids = store
    (train,) = tracker.runs({"ttclab.stage": "train"})
    (gen,) = tracker.runs({"ttclab.stage": "generate"})
    data = tracker.artifact_dir(gen.info.run_id) / "data" / "euler1d.h5"
    want = hashlib.sha256(data.read_bytes()).hexdigest()[:20]
    for run_id, split, context in ((train.info.run_id, "train", "training"), (ids["arm"], "test", "evaluation")):
        (inp,) = tracker.run_info(run_id).inputs.dataset_inputs
        tags = {t.key: t.value for t in inp.tags}
        assert (inp.dataset.name, inp.dataset.digest) == (f"euler1d-{split}", want)
        assert tags == {"mlflow.data.context": context, "ttclab.split": split}
        assert inp.dataset.source == json.dumps({"uri": data.resolve().as_uri()})
        fields = {s["name"]: s["tensor-spec"] for s in json.loads(inp.dataset.schema)["mlflow_colspec"]}
        assert fields["density"] == {"dtype": "float32", "shape": [12, 9, 32]}  # ICs, snapshots, cells


def test_training_runs_carry_system_metrics(store):
    tracker, _, ids = store
    (train,) = tracker.runs({"ttclab.stage": "train"})
    keys = set(train.data.metrics)
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= keys
    assert not any(k.startswith("system/") for k in tracker.run_info(ids["arm"]).data.metrics)


def test_compare_html_has_one_trace_per_run_and_loads_plotly_from_the_run(store):
    tracker, _, ids = store
    art = tracker.artifact_dir(ids["compare"]) / "figures"
    html = (art / "compare.html").read_text()
    assert '<script charset="utf-8" src="plotly.min.js">' in html and (art / "plotly.min.js").stat().st_size > 1e6
    assert not re.findall(r'src="(?:https?:)?//', html)  # no external script: renders offline
    data = json.loads(re.search(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*(\[.*?\]),\s*\{", html, re.S)[1])
    names = {"ttc · arm · N3 · +proj", "ttc · baseline · N3", "ttc · prm · N3"}
    mse = [t for t in data if t.get("xaxis") in (None, "x") and t["type"] == "scatter"]
    assert {t["name"] for t in mse} == names and len(mse) == 3
    assert all(min(t["x"]) >= 1 for t in mse)  # no step 0 on the log axis
    boxes = [t for t in data if t["type"] == "box"]
    assert {t["name"] for t in boxes} == names
    colour = {t["name"]: t["marker"]["color"] for t in boxes}
    runs = [t for t in data if t["type"] == "scatter" and t["name"] in names]  # not the grey reference lines
    assert all(t["marker"]["color"] == colour[t["name"]] for t in runs)
    # Every figure of a ttc run shares one plotly.js: only figures/ holds a copy.
    ttc_art = tracker.artifact_dir(ids["arm"])
    assert [p.parent.name for p in ttc_art.rglob("plotly.min.js")] == ["figures"]


def plotly_traces(path):
    html = path.read_text()
    return json.loads(re.search(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*(\[.*?\]),\s*\{", html, re.S)[1])


def xs(trace) -> list:
    """A trace's x values; plotly writes numpy arrays as base64 typed arrays."""
    x = trace["x"]
    if isinstance(x, dict):
        return np.frombuffer(base64.b64decode(x["bdata"]), dtype=np.dtype(x["dtype"])).tolist()
    return x


def test_ttc_figures_skip_step_0_on_log_axes_and_keep_colours_across_panels(store):
    tracker, _, ids = store
    figs = tracker.artifact_dir(ids["arm"]) / "figures"
    for name in ("rollout_mse", "conservation"):
        assert all(min(xs(t)) >= 1 for t in plotly_traces(figs / f"{name}.html")), name
    colours = {}
    for t in plotly_traces(figs / "example.html"):
        assert colours.setdefault(t["name"], t["line"]["color"]) == t["line"]["color"]
    assert len(set(colours.values())) == len(colours) == 3  # truth, baseline, arm


def test_sweep_summary_says_whether_any_trial_beats_the_baseline():
    from types import SimpleNamespace as NS

    from ttclab.sweep.report import baseline_value, versus_baseline

    run = {"rollout_mse/h8": 2e-4, "control/baseline/rollout_mse/h8": 3e-4}
    assert baseline_value("rollout_mse/h8", run) == 3e-4 and baseline_value("sample_gain/mean", run) == 0.0
    assert baseline_value("prm/spearman", run) is None
    spec = NS(objective=[NS(metric="rollout_mse/h8", direction="minimize")])
    trials = [NS(values=[v]) for v in (4e-4, 2e-4, 5e-4)]
    assert versus_baseline(spec, trials, 3e-4) == "deterministic baseline rollout_mse/h8=0.0003: 1 of 3 finished trials beat it"
    assert versus_baseline(spec, trials, 1e-4).endswith(": no trial beats it")
    gain = NS(objective=[NS(metric="sample_gain/mean", direction="maximize")])
    assert versus_baseline(gain, [NS(values=[-1.5])], 0.0).endswith("no trial beats it")


def test_compare_lists_the_run_of_every_candidate_seed_in_a_row(store, tiny_project):
    tracker, cfg, ids = store
    seed1, _ = Context(tracker, progress=False).run("ttc", tiny(tiny_project, "ttc.reward=baseline", "sampling.seed=1"))
    rows = {name: seeds for name, _, _, seeds in compare_stage.collect(tracker, cfg)}
    # The baseline row aggregates seeds 0 and 1: both runs are listed (the newest per seed), the ARM row has one.
    assert seed1 in rows["baseline"] and len(rows["baseline"]) == 2 and rows["arm+proj"] == [ids["arm"]]


def test_compare_html_shows_the_reliability_of_the_prm_a_row_used(store):
    tracker, _, ids = store
    (prm,) = tracker.runs({"ttclab.stage": "train_prm"})
    calib = json.loads((tracker.artifact_dir(prm.info.run_id) / "prm_calibration.json").read_text())
    assert calib["ece"] == pytest.approx(prm.data.metrics["prm/ece"])  # the buckets behind the logged ECE
    assert sum(calib["count"]) > 0 and all(0 <= q <= 1 for q in calib["q_mean"] + calib["goodness"])
    data = plotly_traces(tracker.artifact_dir(ids["compare"]) / "figures" / "compare.html")
    scatter = [t for t in data if t["type"] == "scatter" and t.get("text")]
    (panel,) = [t for t in scatter if any("ECE" in h for h in t["text"])]  # only the PRM row has one
    assert panel["name"] == "ttc · prm · N3" and prm.info.run_name in panel["text"][0]
    assert xs(panel) == pytest.approx(calib["q_mean"]) and panel["xaxis"] != "x"
    refs = [t for t in data if t.get("name") in ("perfect ranker", "random scorer")]
    assert {t["xaxis"] for t in refs} == {panel["xaxis"]}


def compare_table(tracker, run_id) -> dict[str, dict[str, str]]:
    """compare.md as {row: {column: cell}}."""
    lines = (tracker.artifact_dir(run_id) / "compare.md").read_text().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:] if line.startswith("|")]
    return {r["selector"]: r for r in rows}


def test_compare_shows_the_wall_time_and_peak_memory_of_each_run(store):
    tracker, _, ids = store
    table = compare_table(tracker, ids["compare"])
    for row, run_id in (("arm+proj", ids["arm"]), ("baseline", ids["baseline"]), ("prm", ids["prm"])):
        run = tracker.run_info(run_id)
        seconds, peak = run.data.metrics["cost/run_s"], run.data.metrics["cost/peak_rss_mb"]
        assert table[row]["run s"] == f"{seconds:.1f}" and table[row]["peak RSS MB"] == f"{peak:.0f}"
        assert float(table[row]["wall s"]) <= seconds <= (run.info.end_time - run.info.start_time) / 1000
        assert peak > 50  # torch alone keeps > 50 MB resident
    # The first ttc run trained the operator inside it (get-or-run): its own time leaves that out.
    (train,) = tracker.runs({"ttclab.stage": "train"})
    arm = tracker.run_info(ids["arm"])
    assert arm.info.start_time <= train.info.start_time and train.info.end_time <= arm.info.end_time
    outside = (arm.info.end_time - arm.info.start_time - train.info.end_time + train.info.start_time) / 1000
    assert arm.data.metrics["cost/run_s"] <= outside + 0.05


def test_own_usage_leaves_nested_blocks_out():
    import time

    from ttclab.process import own_usage

    with own_usage() as outer:
        with own_usage() as big:
            block = np.ones(96 * 2**20 // 8)  # 96 MB, touched
            del block
            time.sleep(0.2)
        with own_usage() as small:
            block = np.ones(8 * 2**20 // 8)
            del block
    assert big.peak_mb - small.peak_mb > 60  # each block has its own high-water mark ...
    assert outer.peak_mb < big.peak_mb - 60  # ... and the enclosing one counts only its own parts
    assert big.seconds >= 0.2 and outer.seconds < 0.1


def test_registered_runs_fill_the_runs_tables_models_column(store):
    """The UI's Models column lists a run's logged models (MLflow 3) and its registered versions;
    each registered train / train_prm run has one logged model named like its registered model,
    pointing at the run's weights, and the version records it."""
    tracker, cfg, _ = store
    for stage, kind in (("train", "operator"), ("train_prm", "prm")):
        run = tracker.runs({"ttclab.stage": stage})[-1]
        (output,) = tracker.run_info(run.info.run_id).outputs.model_outputs
        model = tracker.client.get_logged_model(output.model_id)
        assert (model.name, model.source_run_id, str(model.status)) == (f"ttclab-{cfg.name}-{kind}", run.info.run_id, "READY")
        assert model.tags["ttclab.weights"] == f"runs:/{run.info.run_id}/model"
        (version,) = tracker.client.search_model_versions(f"run_id IN ('{run.info.run_id}')")
        assert version.name == model.name and version.tags["ttclab.logged_model"] == model.model_id
        assert version.source.endswith(f"{run.info.run_id}/artifacts/model")
