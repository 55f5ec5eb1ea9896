"""Stages as MLflow runs in a temporary store: params, tags, metrics, artifacts, get-or-run, failures."""

from __future__ import annotations

import pytest
import torch

from ttclab.data.pdebench import DataError, PDEBenchFile
from ttclab.problems import make_problem
from ttclab.stages import STAGES, Context
from ttclab.tracking import store
from ttclab.tracking.store import Tracker
from ttclab.models.checkpoint import load_operator


@pytest.fixture(scope="module")
def two_trains(tmp_path_factory, tracking_store_in, tiny_project):
    """`train` run twice on the tiny euler1d in a fresh store; the first must generate its data."""
    with pytest.MonkeyPatch.context() as mp:
        home = tmp_path_factory.mktemp("store")
        tracker = Tracker(tracking_store_in(mp, home))
        cfg = tiny_project("euler1d")
        ctx = Context(tracker, progress=False)
        first, outputs = ctx.run("train", cfg)
        second, _ = ctx.run("train", cfg)
        yield {"tracker": tracker, "cfg": cfg, "first": first, "second": second, "outputs": outputs,
               "home": home}


def runs_by_stage(tracker, project="euler1d") -> dict[str, list]:
    exp = tracker.client.get_experiment_by_name(f"ttclab/{project}")
    out: dict[str, list] = {}
    for run in tracker.client.search_runs([exp.experiment_id]):
        out.setdefault(run.data.tags["ttclab.stage"], []).append(run)
    return out


def test_train_makes_a_generate_and_a_train_run_and_reuses_generate(two_trains):
    runs = runs_by_stage(two_trains["tracker"])
    assert sorted(runs) == ["generate", "train"]
    assert len(runs["generate"]) == 1  # get-or-run: the second train found the finished generate run
    assert {r.info.run_id for r in runs["train"]} == {two_trains["first"], two_trains["second"]}
    assert all(r.info.status == "FINISHED" and r.info.end_time for rs in runs.values() for r in rs)


def test_runs_carry_the_flat_config_and_contract_tags(two_trains):
    cfg, tracker = two_trains["cfg"], two_trains["tracker"]
    expected = {k: str(v) for k, v in cfg.flat().items()} | {"runtime.device": "cpu"}
    for run in [r for rs in runs_by_stage(tracker).values() for r in rs]:
        assert run.data.params == expected
        stage = run.data.tags["ttclab.stage"]
        assert run.data.tags["ttclab.project"] == "euler1d"
        assert run.data.tags["ttclab.key"] == cfg.key(*STAGES.get(stage).key)
    params = tracker.run_info(two_trains["first"]).data.params
    assert params["train.epochs"] == "2" and params["model.width"] == "8" and params["problem.n_cells"] == "32"


def test_train_run_logs_loss_curves(two_trains):
    client, run_id, cfg = two_trains["tracker"].client, two_trains["first"], two_trains["cfg"]
    train_loss = client.get_metric_history(run_id, "train/loss")
    val_loss = client.get_metric_history(run_id, "val/loss")
    steps = [m.step for m in train_loss]
    assert len(steps) > 1 and steps == sorted(steps) and len(set(steps)) == len(steps)
    assert len(val_loss) == cfg.train.epochs and max(m.step for m in val_loss) == max(steps)
    metrics = client.get_run(run_id).data.metrics
    assert "val/best_loss" in metrics and "val/rollout_nrmse/h1" in metrics
    assert all(torch.isfinite(torch.tensor(m.value)) for m in train_loss + val_loss)


def test_train_run_stores_a_loadable_checkpoint(two_trains):
    tracker, run_id = two_trains["tracker"], two_trains["first"]
    assert "model/operator.pt" in [a.path for a in tracker.client.list_artifacts(run_id, "model")]
    path = tracker.resolve(f"runs:/{run_id}/model/operator.pt")
    assert path == two_trains["outputs"]["checkpoint"]
    assert path.is_relative_to(two_trains["home"])  # artifacts follow TTCLAB_HOME, not the cwd
    model, _, problem = load_operator(path, expect_problem="euler1d")
    assert model(torch.zeros(1, 3, 32)).shape == (1, 3, 32) and problem.shape == (32,)


def test_generate_run_stores_the_data_file(two_trains):
    tracker = two_trains["tracker"]
    (gen,) = runs_by_stage(tracker)["generate"]
    problem = make_problem(two_trains["cfg"].problem)
    with PDEBenchFile(tracker.resolve(f"runs:/{gen.info.run_id}/data/euler1d.h5"), problem) as f:
        assert (f.n_trajectories, f.n_snapshots) == (12, 9)
        assert f.meta("split_train") is not None and f.meta("norm_mean") is not None
    assert max(v for k, v in gen.data.metrics.items() if k.startswith("data/conservation/")) < 1e-6


def test_metrics_go_out_in_batches(isolated_tracking, tiny_project, tiny_data_file, monkeypatch):
    tracker = Tracker(isolated_tracking)
    calls = []
    log_batch = tracker.client.log_batch
    monkeypatch.setattr(tracker.client, "log_batch",
                        lambda run_id, **kw: calls.append(len(kw.get("metrics") or [])) or log_batch(run_id, **kw))
    monkeypatch.setattr(tracker.client, "log_metric", lambda *a, **kw: pytest.fail("per-value log_metric call"))
    cfg = tiny_project("euler1d", f"data.path={tiny_data_file('euler1d')}")
    Context(tracker, progress=False).run("train", cfg)
    metric_calls = [n for n in calls if n]
    assert len(metric_calls) == 1 and metric_calls[0] > 20  # all points of a tiny run in one call


def test_failing_stage_ends_failed(isolated_tracking, tiny_project, tmp_path):
    tracker = Tracker(isolated_tracking)
    cfg = tiny_project("euler1d", f"data.path={tmp_path / 'absent.h5'}")
    with pytest.raises(DataError):
        Context(tracker, progress=False).run("train", cfg)
    (run,) = runs_by_stage(tracker)["train"]
    assert run.info.status == "FAILED" and run.info.end_time


def test_interrupted_stage_ends_killed(isolated_tracking, tiny_project, monkeypatch):
    def interrupted(cfg, ctx, run):
        raise KeyboardInterrupt

    monkeypatch.setattr(STAGES.get("generate"), "fn", interrupted)
    tracker = Tracker(isolated_tracking)
    with pytest.raises(KeyboardInterrupt):
        Context(tracker, progress=False).run("generate", tiny_project("euler1d"))
    (run,) = runs_by_stage(tracker)["generate"]
    assert run.info.status == "KILLED"


def test_stage_attaches_to_the_run_mlflow_run_created(isolated_tracking, tiny_project, tmp_path, monkeypatch):
    """Under `mlflow run`, MLFLOW_RUN_ID names a run that already exists: log into it, once."""
    client = Tracker(isolated_tracking).client
    exp = client.create_experiment("mlflow-run", artifact_location=(tmp_path / "art").as_uri())
    created = client.create_run(exp).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", created)
    tracker = Tracker(isolated_tracking)
    run_id, _ = Context(tracker, progress=False).run("generate", tiny_project("euler1d"))
    assert run_id == created
    run = tracker.run_info(created)
    assert run.info.status == "FINISHED" and run.data.tags["ttclab.stage"] == "generate"
    assert len(client.search_runs([exp])) == 1
    assert tracker.client.get_experiment_by_name("ttclab/euler1d") is None
    # The run id is consumed: a later stage in the same process opens its own run.
    second, _ = Context(tracker, progress=False).run("generate", tiny_project("euler1d"))
    assert second != created


def test_default_store_is_absolute_and_overridable(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("TTCLAB_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path.parent)
    assert store.default_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.delenv("TTCLAB_HOME")
    uri = store.default_tracking_uri()
    assert uri.startswith("sqlite:////") and uri.endswith("/mlflow.db")  # absolute, cwd-independent
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert store.default_tracking_uri() == "http://tracking.example:5000"


def test_search_values_with_quotes_are_quoted(isolated_tracking):
    tracker = Tracker(isolated_tracking)
    with tracker.start("it's", "generate", params={}, tags={"ttclab.key": 'say "hi"'}) as run:
        pass
    assert [r.info.run_id for r in tracker.runs({"ttclab.project": "it's"})] == [run.id]
    assert tracker.find("it's", "generate", 'say "hi"') == run.id
    with pytest.raises(store.TrackingError, match="both ' and"):
        tracker.runs({"ttclab.project": "it's \"both\""})


def test_bad_run_uris_are_one_line_errors(two_trains):
    tracker, run_id = two_trains["tracker"], two_trains["first"]
    cases = {
        "runs:/0123456789abcdef0123456789abcdef/model/operator.pt": "no such run",
        f"runs:/{run_id}/../../../../etc/passwd": "leaves the run's artifacts",
        f"runs:/{run_id}/model/absent.pt": "it has: model/last.pt, model/operator.pt",
        "models:/no-such-model/1": "no such registered model version",
    }
    for uri, fragment in cases.items():
        with pytest.raises(store.TrackingError) as err:
            tracker.resolve(uri)
        assert fragment in str(err.value) and uri in str(err.value) and "\n" not in str(err.value)


def test_bad_tracking_uris_are_one_line_errors(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for uri, fragment in {f"http://user:secret@127.0.0.1:{port}": "no MLflow server answers",
                          "foo://bar": "foo://bar", f"sqlite:///{tmp_path}/file/x.db": "x.db"}.items():
        if "file/" in uri:
            (tmp_path / "file").write_text("a file where a folder should be")
        with pytest.raises(store.TrackingError) as err:
            Tracker(uri)
        assert fragment in str(err.value) and "secret" not in str(err.value) and "\n" not in str(err.value)


def test_runs_of_dead_processes_are_closed_failed(isolated_tracking):
    import socket
    import subprocess

    tracker = Tracker(isolated_tracking)
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    owners = {"dead": {"ttclab.host": host, "ttclab.pid": str(dead.pid)},
              "reused": {"ttclab.host": host, "ttclab.pid": "1", "ttclab.pid_start": "-1"},  # PID 1 is not that process
              "alive": {},  # this process's own tags
              "other host": {"ttclab.host": "elsewhere", "ttclab.pid": str(dead.pid)}}
    ids, opened = {}, []
    for name, tags in owners.items():
        opened.append(tracker.start("euler1d", "train", params={}, tags={}))  # kept open: left RUNNING
        ids[name] = opened[-1].__enter__().id
        tracker.client.log_batch(ids[name], tags=[store.RunTag(k, v) for k, v in tags.items()])
    closed = tracker.close_dead_runs()
    assert sorted(r.info.run_id for r in closed) == sorted([ids["dead"], ids["reused"]])
    status = {name: tracker.run_info(i).info.status for name, i in ids.items()}
    assert status == {"dead": "FAILED", "reused": "FAILED", "alive": "RUNNING", "other host": "RUNNING"}


def test_artifacts_are_replaced_whole(isolated_tracking, tmp_path):
    tracker = Tracker(isolated_tracking)
    with tracker.start("euler1d", "train", params={}, tags={}) as run:
        for text in ("first", "second"):
            (tmp_path / "last.pt").write_text(text)
            run.artifact(tmp_path / "last.pt", "model")
    folder = tracker.artifact_dir(run.id) / "model"
    assert [p.name for p in folder.iterdir()] == ["last.pt"] and (folder / "last.pt").read_text() == "second"


def test_progress_off_a_terminal_prints_tenths_without_carriage_returns():
    import io

    from ttclab.progress import LineProgress, progress_bar

    log = io.StringIO()
    bar = progress_bar(250, "train", file=log)
    assert isinstance(bar, LineProgress)
    for _ in range(250):
        bar.set_postfix(loss="1.0e-03")
        bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 10
    assert lines[0] == "train:  10% (25/250) loss=1.0e-03" and lines[-1].startswith("train: 100% (250/250)")
    assert progress_bar(250, "solver", file=io.StringIO(), leave=False).disable  # transient bars: silent


@pytest.mark.parametrize("status", [200, 401])
def test_a_server_that_answers_passes_the_check(status):
    """Any HTTP answer at /health (also 'log in first') means a server listens: no error here."""
    import http.server
    import threading

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.handle_request, daemon=True).start()
    try:
        store.check_server(f"http://user:secret@127.0.0.1:{server.server_port}/")
    finally:
        server.server_close()


def test_metrics_reach_the_store_within_flush_s(isolated_tracking, monkeypatch):
    """Points are batched, but never held longer than FLUSH_S: a run killed by kill -9 keeps its
    curves up to then (and the UI shows a long training live)."""
    tracker = Tracker(isolated_tracking)
    with tracker.start("euler1d", "train", params={}, tags={}) as run:
        run.log({"train/loss": 1.0}, 1)
        assert tracker.metrics(run.id) == {}  # batched
        monkeypatch.setattr(run, "FLUSH_S", 0.0)
        run.log({"train/loss": 0.5}, 2)
        assert [m.value for m in tracker.client.get_metric_history(run.id, "train/loss")] == [1.0, 0.5]
