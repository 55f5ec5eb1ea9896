"""MLflow behind a small interface: the only module that imports mlflow.

Runs are driven through `MlflowClient` (no fluent global state), so nested sweep trials, upstream
stages run on demand and parallel workers never fight over an "active run".
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlparse

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow.entities import Metric, Param, RunStatus, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def home() -> Path:
    """Where the default store, artifacts and local sweep journals live: $TTCLAB_HOME, else the
    repository root for a source checkout (so `mlflow ui` run there sees the same store), else
    ~/.ttclab. Absolute, so the store does not depend on the current directory."""
    if os.environ.get("TTCLAB_HOME"):
        return Path(os.environ["TTCLAB_HOME"]).expanduser().resolve()
    if (PACKAGE_ROOT / "pyproject.toml").is_file() and (PACKAGE_ROOT / "MLproject").is_file():
        return PACKAGE_ROOT
    return Path.home() / ".ttclab"


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home() / 'mlflow.db'}"


def is_local_store(uri: str) -> bool:
    return uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri


class Pruned(Exception):
    """Raised through a stage by a sweep's reporter to stop a trial early; its run ends KILLED."""


class Run:
    """One MLflow run: buffered metrics (flushed in `log_batch` calls, never one call per value),
    params, tags, artifacts, and intermediate values reported to a sweep."""

    FLUSH_AT = 500

    def __init__(self, tracker: "Tracker", run_id: str):
        self.tracker, self.id = tracker, run_id
        self._metrics: list[Metric] = []

    def log(self, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self._metrics += [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        if len(self._metrics) >= self.FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        for i in range(0, len(self._metrics), 1000):
            self.tracker.client.log_batch(self.id, metrics=self._metrics[i : i + 1000])
        self._metrics = []

    def params(self, params: dict) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.tracker.client.log_batch(self.id, params=items[i : i + 100])

    def tags(self, tags: dict) -> None:
        self.tracker.client.log_batch(self.id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def artifact(self, path: str | Path, subdir: str | None = None) -> None:
        self.tracker.client.log_artifact(self.id, str(path), subdir)

    def text(self, text: str, name: str) -> None:
        self.tracker.client.log_text(self.id, text, name)

    def report(self, key: str, value: float, step: int) -> None:
        """An intermediate objective value; a sweep's reporter may raise Pruned here."""
        if self.tracker.reporter is not None:
            self.tracker.reporter(key, float(value), int(step))

    def artifact_dir(self) -> Path:
        return self.tracker.artifact_dir(self.id)


class Tracker:
    def __init__(self, uri: str | None = None):
        self.uri = uri or default_tracking_uri()
        self.client = MlflowClient(self.uri)
        # Under `mlflow run`, the command must log into the run mlflow created: take its id once,
        # for the first (top-level) stage only; upstream stages run on demand get their own runs.
        self._attach = os.environ.pop("MLFLOW_RUN_ID", None)
        self.reporter = None
        self.client.search_experiments(max_results=1)  # creates/migrates the SQLite schema up front

    def experiment_id(self, project: str) -> str:
        name = f"ttclab/{project}"
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:"):
            location = (home() / "mlartifacts" / re.sub(r"[^\w.-]", "_", name)).as_uri()
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
        all_tags = {"ttclab.stage": stage, "ttclab.project": project, **tags}
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

    def find(self, project: str, stage: str, key: str) -> str | None:
        """Newest FINISHED run of `stage` for `project` whose config key matches, in any experiment
        (a run made by `mlflow run` may live outside ttclab/<project>)."""
        exps = [e.experiment_id for e in self.client.search_experiments()]
        runs = self.client.search_runs(
            exps,
            filter_string=(f"tags.`ttclab.stage` = '{stage}' and tags.`ttclab.project` = '{project}' "
                           f"and tags.`ttclab.key` = '{key}' and attributes.status = 'FINISHED'"),
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def run_info(self, run_id: str):
        return self.client.get_run(run_id)

    def runs(self, tags: dict[str, str], status: str | None = None) -> list:
        """Runs in any experiment carrying all `tags` (and `status`, e.g. RUNNING), newest first."""
        clauses = [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
        if status is not None:
            clauses.append(f"attributes.status = '{status}'")
        exps = [e.experiment_id for e in self.client.search_experiments()]
        return self.client.search_runs(exps, filter_string=" and ".join(clauses),
                                       order_by=["attributes.start_time DESC"], max_results=1000)

    def metrics(self, run_id: str) -> dict[str, float]:
        """The latest value of every metric of a run."""
        return dict(self.client.get_run(run_id).data.metrics)

    def close(self, run_id: str, status: str) -> None:
        """End a run left open by a dead process (FAILED) or the like."""
        self.client.set_terminated(run_id, status=status)

    def artifact_dir(self, run_id: str) -> Path:
        """Local folder of a run's artifacts; downloaded once for remote stores."""
        uri = self.client.get_run(run_id).info.artifact_uri
        parsed = urlparse(uri)
        if parsed.scheme in ("", "file"):
            return Path(unquote(parsed.path))
        cache = home() / "runs" / "artifact-cache" / run_id
        if not cache.exists():
            tmp = Path(tempfile.mkdtemp(dir=cache.parent if cache.parent.exists() else None))
            self.client.download_artifacts(run_id, "", str(tmp))
            cache.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, cache)
        return cache

    def resolve(self, uri: str) -> Path:
        """`runs:/<id>/<path>`, `models:/<name>/<version>` or a local path -> a local file path."""
        if uri.startswith("runs:/"):
            run_id, _, rel = uri[len("runs:/") :].partition("/")
            return self.artifact_dir(run_id) / rel
        if uri.startswith("models:/"):
            from mlflow.artifacts import download_artifacts

            return Path(download_artifacts(artifact_uri=uri, tracking_uri=self.uri))
        return Path(uri)


def serve_ui(port: int, project: str | None = None) -> None:
    """Run `mlflow ui` on loopback over the default store; print where the runs table lives (the
    MLflow 3 UI opens an experiment on its GenAI overview, the table is under #/.../runs)."""
    import subprocess

    uri = default_tracking_uri()
    tracker = Tracker(uri)
    base = f"http://127.0.0.1:{port}"
    if project:
        exp = tracker.client.get_experiment_by_name(f"ttclab/{project}")
        where = f"{base}/#/experiments/{exp.experiment_id}/runs" if exp else base
    else:
        where = base
    print(f"[ttclab] MLflow UI over {uri}\n[ttclab] runs table: {where}  (add ?compareRunsMode=CHART for charts)")
    cmd = ["mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)]
    if uri.startswith("sqlite:"):
        cmd += ["--default-artifact-root", (home() / "mlartifacts").as_uri()]
    subprocess.run(cmd, check=False)
