"""The MLflow Model Registry for ttclab's trained models: operators, PRMs and TRC controllers.

A finished train / train_prm / trc run registers its `model/` folder as a new version of
`ttclab-<project>-<kind>` (kind: operator | prm | trc). MLflow reserves the alias `latest`
(`models:/<name>/latest` already means the newest version), so the newest is reached that way; the
alias `champion` goes to the first version and then stays wherever a user moves it (UI, or
`MlflowClient().set_registered_model_alias(name, "champion", version)`). A version is only a pointer
to the run's artifacts: `models:/...` URIs resolve to the same weights file a `runs:/` URI names,
read by ttclab's weights-only loaders (no pickle-based MLflow flavor). Each registered run also gets
an MLflow logged model of the same name (tags only, no flavor), so the runs table's Models column
shows it.
"""

from __future__ import annotations

from urllib.parse import urlparse

from mlflow.entities import LoggedModelOutput
from mlflow.exceptions import MlflowException

from .uris import TrackingError, redact

CHAMPION = "champion"
FOLDER = "model"  # the run's artifact folder a version points at


def model_name(project: str, kind: str) -> str:
    return f"ttclab-{project}-{kind}"


def register(tracker, project: str, kind: str, run_id: str) -> str:
    """New version of ttclab-<project>-<kind> pointing at the run's model/ folder -> its number."""
    client, name = tracker.client, model_name(project, kind)
    with tracker.lock(f"registry-{name}"):
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name, description=f"ttclab {kind} checkpoints of project {project}; "
                                           f"load with --input {kind}=models:/{name}@{CHAMPION}")
        run = client.get_run(run_id)
        source = f"{run.info.artifact_uri}/{FOLDER}"
        tags = {"ttclab.stage_run": run_id}
        logged = logged_model(client, run, name)
        if logged is not None:
            tags["ttclab.logged_model"] = logged
        version = client.create_model_version(name, source, run_id=run_id, tags=tags)
        if CHAMPION not in client.get_registered_model(name).aliases:
            client.set_registered_model_alias(name, CHAMPION, version.version)
    return str(version.version)


def logged_model(client, run, name: str) -> str | None:
    """An MLflow 3 logged model for the run's model/ folder -> its id: the runs table's Models column
    and the run page list a run's logged models (registered versions alone show there as "-"). It
    holds no copy of the weights: its tags point at the run's folder, which every loader reads
    weights-only. None on a tracking server without logged models (the version still works)."""
    try:
        model = client.create_logged_model(run.info.experiment_id, name=name, source_run_id=run.info.run_id,
                                           tags={"ttclab.weights": f"runs:/{run.info.run_id}/{FOLDER}"})
        client.finalize_logged_model(model.model_id, "READY")
        client.log_outputs(run.info.run_id, [LoggedModelOutput(model.model_id, 0)])
    except MlflowException:
        return None
    return model.model_id


def version_of(tracker, uri: str):
    """`models:/<name>/<version>`, `models:/<name>/latest` or `models:/<name>@<alias>` -> the
    ModelVersion; a name, version or alias that does not exist is a TrackingError."""
    path = urlparse(uri).path.strip("/")
    client = tracker.client
    try:
        if "@" in path:
            name, alias = path.rsplit("@", 1)
            return client.get_model_version_by_alias(name, alias)
        name, _, which = path.partition("/")
        if which.isdigit():
            return client.get_model_version(name, which)
        versions = client.search_model_versions(f"name = '{name}'")
        if not versions or which not in ("", "latest"):
            raise MlflowException("no version")
        return max(versions, key=lambda v: int(v.version))
    except MlflowException:
        raise TrackingError(f"{uri}: no such registered model version in {redact(tracker.uri)}; use "
                            "models:/ttclab-<project>-<operator|prm|trc>@champion (or /latest, /<version>) "
                            "or runs:/<id>/<path>") from None


def run_uri(tracker, uri: str, file: str) -> str:
    """The `runs:/<id>/model/<file>` URI a registered version's `file` lives at."""
    version = version_of(tracker, uri)
    base = tracker.client.get_run(version.run_id).info.artifact_uri
    folder = version.source[len(base):].strip("/") if version.source.startswith(base) else FOLDER
    return f"runs:/{version.run_id}/{folder}/{file}"
