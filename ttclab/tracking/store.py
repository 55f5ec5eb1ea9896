"""MLflow behind a small interface: the only module that imports mlflow.

Runs are driven through `MlflowClient` (no fluent global state), so nested sweep trials, upstream
stages run on demand and parallel workers never fight over an "active run".
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlparse

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from . import datasets, registry  # noqa: E402
from ..process import file_lock, identity, is_dead, run_forwarding  # noqa: E402
from .uris import TrackingError, check_server, default_tracking_uri, home, quoted, redact, safe_name  # noqa: E402,F401

class Pruned(Exception):
    """Raised through a stage by a sweep's reporter to stop a trial early; its run ends KILLED."""


class Run:
    """One MLflow run: buffered metrics (flushed in `log_batch` calls, never one call per value),
    params, tags, artifacts, and intermediate values reported to a sweep."""

    FLUSH_AT = 500  # points
    FLUSH_S = 10.0  # seconds: a kill -9 loses at most this much of the curves; the UI shows them live

    def __init__(self, tracker: "Tracker", run_id: str):
        self.tracker, self.id = tracker, run_id
        self._metrics: list[Metric] = []
        self._plotly: set[str] = set()  # artifact folders holding plotly.min.js
        self._flushed = time.monotonic()

    def log(self, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self._metrics += [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        if len(self._metrics) >= self.FLUSH_AT or time.monotonic() - self._flushed >= self.FLUSH_S:
            self.flush()

    def flush(self) -> None:
        for i in range(0, len(self._metrics), 1000):
            self.tracker.client.log_batch(self.id, metrics=self._metrics[i : i + 1000])
        self._metrics, self._flushed = [], time.monotonic()

    def params(self, params: dict) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.tracker.client.log_batch(self.id, params=items[i : i + 100])

    def tags(self, tags: dict) -> None:
        self.tracker.client.log_batch(self.id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def artifact(self, path: str | Path, subdir: str | None = None) -> None:
        """Log a file; on a local artifact store it is copied to a temp name and renamed, so a kill
        at any moment leaves either the previous version or the new one, never a truncated file
        (per-epoch checkpoints rely on this)."""
        local = self.tracker.local_artifact_dir(self.id)
        if local is None:
            self.tracker.client.log_artifact(self.id, str(path), subdir)
            return
        dest = local / (subdir or "") / Path(path).name
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)

    def dataset(self, path: str | Path, split: str, context: str) -> None:
        """Log the data file at `path` as this run's dataset input (tracking/datasets.py). A file
        that is missing or not HDF5 is left to the stage's reader, whose error names the fix."""
        try:
            found = datasets.dataset_input(path, split, context)
        except OSError:
            return
        self.tracker.client.log_inputs(self.id, datasets=[found])

    def text(self, text: str, name: str) -> None:
        """Log `text` as artifact `name`; an HTML figure that loads plotly.js from beside it
        (tracking/figures.py) gets that file once per folder of the run."""
        self.tracker.client.log_text(self.id, text, name)
        folder = str(Path(name).parent)
        if name.endswith(".html") and f'src="{PLOTLY_JS}"' in text and folder not in self._plotly:
            self.artifact(Path(importlib.util.find_spec("plotly").origin).parent / "package_data" / PLOTLY_JS,
                          None if folder == "." else folder)
            self._plotly.add(folder)

    def report(self, key: str, value: float, step: int) -> None:
        """An intermediate objective value; a sweep's reporter may raise Pruned here."""
        if self.tracker.reporter is not None:
            self.tracker.reporter(key, float(value), int(step))

    def artifact_dir(self) -> Path:
        return self.tracker.artifact_dir(self.id)


PLOTLY_JS = "plotly.min.js"  # the name figures load plotly.js by (no plotly import here)
SYSTEM_METRICS_S = 10.0  # seconds between system-metric samples


class Tracker:
    def __init__(self, uri: str | None = None):
        self.uri = uri or default_tracking_uri()
        if self.uri.startswith(("http://", "https://")):
            check_server(self.uri)
        # Under `mlflow run`, the command must log into the run mlflow created: take its id once,
        # for the first (top-level) stage only; upstream stages run on demand get their own runs.
        self._attach = os.environ.pop("MLFLOW_RUN_ID", None)
        self.reporter = None
        self._artifact_uris: dict[str, str] = {}
        # The first touch creates/migrates the SQLite schema; processes starting together on a fresh
        # store would race in MLflow's migration (and leave a stray _alembic_tmp_ table), so one at a
        # time creates it.
        try:
            with self.lock("store"):
                self.client = MlflowClient(self.uri)
                self.client.search_experiments(max_results=1)
        except (MlflowException, OSError) as err:
            text = str(err).strip() or type(err).__name__
            first = text.splitlines()[0].split(". ")[0][:200]  # the first sentence says what is wrong
            raise TrackingError(f"tracking store {redact(self.uri)}: {first}; fix MLFLOW_TRACKING_URI "
                                "(e.g. sqlite:///path/mlflow.db or http://host:5000)") from None

    def lock(self, name: str):
        """An exclusive lock among this machine's processes using the store, for the block: beside
        the SQLite file (`<db>.lock`, `<db>.locks/<name>.lock`), else under <home>/runs/locks."""
        db = self.uri[len("sqlite:///"):] if self.uri.startswith("sqlite:///") else ""
        if db:
            folder, prefix = Path(db).parent, Path(db).name
        else:
            folder, prefix = home() / "runs" / "locks", safe_name(redact(self.uri))
        if name == "store":
            return file_lock(folder / f"{prefix}.lock")
        return file_lock(folder / f"{prefix}.locks" / f"{safe_name(name)}.lock")

    def experiment_id(self, project: str) -> str:
        name = f"ttclab/{project}"
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:"):
            location = (home() / "mlartifacts" / safe_name(name)).as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException:  # another worker created it first
            return self.client.get_experiment_by_name(name).experiment_id

    @contextmanager
    def start(self, project: str, stage: str, *, params: dict, tags: dict, parent: str | None = None,
              name: str | None = None, reopen: str | None = None):
        """Open a run (or attach to mlflow run's, or `reopen` an existing one, e.g. a resumed sweep's
        parent), yield a Run, and always close it: FINISHED on success, KILLED on Ctrl-C or
        pruning, FAILED on any other exception."""
        all_tags = {"ttclab.stage": stage, "ttclab.project": project, **identity(), **tags}
        if parent is not None:
            all_tags["mlflow.parentRunId"] = parent
        if reopen is not None:
            run_id = reopen
            self.client.update_run(run_id, status="RUNNING")
            if self._attach is not None:  # mlflow run's own run only points to the continued one
                self.client.set_tag(self._attach, "ttclab.continued_in", run_id)
                self._attach = None
        elif self._attach is not None:
            run_id, self._attach = self._attach, None
            self.client.update_run(run_id, status="RUNNING", name=name or stage)
        else:
            created = self.client.create_run(self.experiment_id(project), run_name=name or stage, tags={})
            run_id = created.info.run_id
        run = Run(self, run_id)
        run.tags(all_tags)
        run.params(params)
        status = "FAILED"
        try:
            yield run
            status = "FINISHED"
        except (KeyboardInterrupt, Pruned):
            status = "KILLED"
            raise
        finally:
            try:
                run.flush()
            finally:
                self.client.set_terminated(run_id, status=status)

    @contextmanager
    def system_metrics(self, run_id: str, interval_s: float = SYSTEM_METRICS_S):
        """MLflow's system metrics (system/cpu_utilization_percentage, system/system_memory_usage_megabytes,
        GPU ones where present) on the run for the block, one sample per `interval_s` (a psutil
        read and a run look-up: well under 1% of a core at 10 s). MLflow's monitor only logs after a
        full interval, so what a shorter block collected is logged when it ends."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # its start/stop lines are noise
        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, tracking_uri=self.uri)
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()
            leftover = monitor.aggregate_metrics()
            if leftover:
                monitor.publish_metrics(leftover)
                monitor.mlflow_logger.flush()

    def find(self, project: str, stage: str, key: str) -> str | None:
        """Newest FINISHED run of `stage` for `project` whose config key matches, in any experiment
        (a run made by `mlflow run` may live outside ttclab/<project>)."""
        exps = [e.experiment_id for e in self.client.search_experiments()]
        runs = self.client.search_runs(
            exps,
            filter_string=(f"tags.`ttclab.stage` = {quoted(stage)} and tags.`ttclab.project` = {quoted(project)} "
                           f"and tags.`ttclab.key` = {quoted(key)} and attributes.status = 'FINISHED'"),
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def where(self, run_id: str, project: str) -> str:
        """The experiment a run is really in, in words. `mlflow run` without --experiment-name puts
        its run in MLflow's Default experiment while upstream runs go to ttclab/<project>."""
        name = self.client.get_experiment(self.client.get_run(run_id).info.experiment_id).name
        if name == f"ttclab/{project}":
            return f"experiment {name}"
        return (f"experiment {name!r}, not ttclab/{project}, where its upstream runs are; rerun with "
                f"`mlflow run --experiment-name ttclab/{project} ...` or find it by tag ttclab.project={project}")

    def run_info(self, run_id: str):
        return self.client.get_run(run_id)

    def runs(self, tags: dict[str, str], status: str | None = None) -> list:
        """Runs in any experiment carrying all `tags` (and `status`, e.g. RUNNING), newest first."""
        clauses = [f"tags.`{k}` = {quoted(v)}" for k, v in tags.items()]
        if status is not None:
            clauses.append(f"attributes.status = '{status}'")
        exps = [e.experiment_id for e in self.client.search_experiments()]
        return self.client.search_runs(exps, filter_string=" and ".join(clauses),
                                       order_by=["attributes.start_time DESC"], max_results=1000)

    def history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """(step, value) of every logged point of a run's metric, by step."""
        return sorted((m.step, m.value) for m in self.client.get_metric_history(run_id, key))

    def metrics(self, run_id: str) -> dict[str, float]:
        """The latest value of every metric of a run."""
        return dict(self.client.get_run(run_id).data.metrics)

    def close(self, run_id: str, status: str) -> None:
        """End a run left open by a dead process (FAILED) or the like."""
        self.client.set_terminated(run_id, status=status)

    def close_dead_runs(self) -> list:
        """Close as FAILED the RUNNING runs whose process (this host's; others cannot be judged from
        here) is gone or whose PID now belongs to another process. Returns the runs closed."""
        host = identity()["ttclab.host"]
        dead = [r for r in self.runs({"ttclab.host": host}, status="RUNNING") if is_dead(r.data.tags)]
        for r in dead:
            self.client.set_tag(r.info.run_id, "ttclab.closed", "its process died")
            self.close(r.info.run_id, "FAILED")
        return dead

    def _artifact_uri(self, run_id: str, asked: str = "") -> str:
        """The run's artifact URI; `asked` is the URI named in the error when there is no such run."""
        if run_id not in self._artifact_uris:
            try:
                self._artifact_uris[run_id] = self.client.get_run(run_id).info.artifact_uri
            except MlflowException:
                raise TrackingError(f"{asked or 'runs:/' + run_id}: no such run in {redact(self.uri)}; copy the id "
                                    "from the stage's last line or `ttclab ui`") from None
        return self._artifact_uris[run_id]

    def local_artifact_dir(self, run_id: str) -> Path | None:
        """The folder of a run's artifacts when the artifact store is a local path, else None."""
        parsed = urlparse(self._artifact_uri(run_id))
        return Path(unquote(parsed.path)) if parsed.scheme in ("", "file") else None

    def artifact_dir(self, run_id: str) -> Path:
        """Local folder of a run's artifacts; downloaded once for remote stores."""
        local = self.local_artifact_dir(run_id)
        if local is not None:
            return local
        cache = home() / "runs" / "artifact-cache" / run_id
        if not cache.exists():
            tmp = Path(tempfile.mkdtemp(dir=cache.parent if cache.parent.exists() else None))
            self.client.download_artifacts(run_id, "", str(tmp))
            cache.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, cache)
        return cache

    def register(self, project: str, kind: str, run_id: str) -> str:
        """Register the run's model/ folder as a version of ttclab-<project>-<kind> -> version."""
        return registry.register(self, project, kind, run_id)

    def resolve(self, uri: str, file: str = "") -> Path:
        """`runs:/<id>/<path>`, `models:/<name>@<alias>` (or /<version>, /latest) or a local path ->
        a local file path; a registered version is a folder, in which `file` is the one meant. A
        run or model that does not exist, a path that leaves the run's artifacts (`../`) or names
        no artifact is a TrackingError."""
        if uri.startswith("models:/"):
            uri = registry.run_uri(self, uri, file)
        if uri.startswith("runs:/"):
            run_id, _, rel = uri[len("runs:/") :].partition("/")
            self._artifact_uri(run_id, uri)
            base = self.artifact_dir(run_id)
            path = base / rel
            if not path.resolve().is_relative_to(base.resolve()):
                raise TrackingError(f"{uri}: the path leaves the run's artifacts; name a file inside it, "
                                    f"e.g. runs:/{run_id}/model/operator.pt")
            if not path.exists():
                have = sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())
                raise TrackingError(f"{uri}: run {run_id} has no artifact {rel!r}; it has: "
                                    f"{', '.join(have[:8]) or 'none'}{' ...' if len(have) > 8 else ''}")
            return path
        return Path(uri)


def serve_ui(port: int, project: str | None = None) -> int:
    """Run `mlflow ui` on loopback over the default store until it ends or this process gets SIGTERM
    or Ctrl-C (forwarded to the server, which is waited for); print where the runs table lives (the
    MLflow 3 UI opens an experiment on its GenAI overview, the table is under #/.../runs)."""
    uri = default_tracking_uri()
    tracker = Tracker(uri)
    base = f"http://127.0.0.1:{port}"
    if project:
        exp = tracker.client.get_experiment_by_name(f"ttclab/{project}")
        where = f"{base}/#/experiments/{exp.experiment_id}/runs" if exp else base
    else:
        where = base
    print(f"[ttclab] MLflow UI over {redact(uri)}\n[ttclab] runs table: {where}  (add ?compareRunsMode=CHART for charts)")
    cmd = ["mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)]
    if uri.startswith("sqlite:"):
        cmd += ["--default-artifact-root", (home() / "mlartifacts").as_uri()]
    return run_forwarding(cmd)
