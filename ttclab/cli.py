"""Command line: the only module that imports click. One command per pipeline stage, plus `ui`.

Every stage command takes a project YAML, dotted `--set` overrides, `--device` and `--seed`, and
runs as one MLflow run. Bad input ends with a one-line error naming the file and the fix.
"""

from __future__ import annotations

import sys

import click

from .config import ConfigError
from .data.pdebench import DataError
from .models.checkpoint import CheckpointError

USER_ERRORS = (ConfigError, DataError, CheckpointError, KeyError, FileNotFoundError, ValueError)


def _fail(err: Exception) -> None:
    msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    click.echo(f"error: {msg}", err=True)
    sys.exit(2)


def _parse_inputs(items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, uri = item.partition("=")
        if not sep:
            raise ConfigError(f"--input {item!r}: expected STAGE=URI, e.g. --input operator=runs:/<id>/model/operator.pt")
        if uri:  # an empty URI (an unset MLproject parameter) means get-or-run
            out[name] = uri
    return out


def run_stage(name: str, project: str, overrides, device: str, seed, inputs, quiet: bool, tracking_uri=None):
    from .project import load_project
    from .stages import Context, resolve_device, set_threads
    from .tracking.store import Tracker

    sets = list(overrides) + ([f"seed={seed}"] if seed is not None else [])
    try:
        cfg = load_project(project, sets)
        ctx = Context(Tracker(tracking_uri), resolve_device(device), progress=not quiet, inputs=_parse_inputs(inputs))
        set_threads()
        run_id, outputs = ctx.run(name, cfg)
    except USER_ERRORS as err:
        _fail(err)
    except KeyboardInterrupt:
        click.echo("interrupted: the run was marked KILLED", err=True)
        sys.exit(130)
    click.echo(f"[ttclab] {name} run {run_id} finished (experiment ttclab/{cfg.name})")
    return outputs


def stage_command(name: str, help_text: str) -> click.Command:
    @click.command(name=name, help=help_text)
    @click.argument("project", type=click.Path(dir_okay=False))
    @click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                  help="Dotted config override, e.g. --set train.epochs=3 (repeatable).")
    @click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]), show_default=True)
    @click.option("--seed", type=int, default=None, help="Overrides the project's seed.")
    @click.option("--input", "inputs", multiple=True, metavar="STAGE=URI",
                  help="Use this upstream result instead of get-or-run, e.g. operator=runs:/<id>/model/operator.pt, "
                       "resume=<checkpoint> (runs:/, models:/ or a path).")
    @click.option("--overrides", "joined", default="", metavar="'K=V K=V'",
                  help="Space-separated KEY=VALUE overrides in one string (for MLproject parameters).")
    @click.option("--quiet", is_flag=True, help="No progress bars.")
    def command(project, overrides, device, seed, inputs, joined, quiet):
        run_stage(name, project, list(overrides) + joined.split(), device, seed, inputs, quiet)

    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """ttclab: test-time computing on learned PDE simulators, tracked in MLflow."""


def _register_stages():
    from .stages import STAGES

    for name in STAGES.names():
        main.add_command(stage_command(name, STAGES.get(name).help))


@main.command()
@click.argument("project", required=False, type=click.Path(dir_okay=False))
@click.option("--port", default=5000, show_default=True)
def ui(project, port):
    """Open the MLflow UI on 127.0.0.1 over ttclab's store (and print the runs-table address)."""
    from .tracking.store import serve_ui

    name = None
    if project:
        from .project import load_project

        try:
            name = load_project(project).name
        except ConfigError as err:
            _fail(err)
    serve_ui(port, name)


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Worker processes; the cores are split among them.")
@click.option("--n-trials", type=click.IntRange(min=0), default=0,
              help="Total trials of the study (0 = the spec's n_trials).")
@click.option("--storage", default=None, metavar="URI",
              help="Optuna storage: a SQLAlchemy URL (postgresql+psycopg2://...) shared by many machines, or a "
                   "journal file path; default: a journal file under the runs directory.")
@click.option("--resume/--fresh", default=True, show_default=True,
              help="Continue the stored study to n_trials, or delete it and start over.")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]), show_default=True)
@click.option("--quiet", is_flag=True, help="Only errors and the final summary line.")
def sweep(spec, workers, n_trials, storage, resume, device, quiet):
    """Run (or continue) an Optuna sweep from a YAML spec: one nested MLflow run per trial."""
    from .stages import set_threads
    from .sweep import run_sweep

    set_threads()
    try:
        summary = run_sweep(spec, workers=workers, n_trials=n_trials or None, storage=storage, fresh=not resume,
                            device=device, quiet=quiet)
    except USER_ERRORS as err:
        _fail(err)
    except KeyboardInterrupt:
        click.echo("interrupted: running trials were marked failed and will be retried on resume", err=True)
        sys.exit(130)
    if summary and quiet:
        best = summary["best"]
        click.echo(f"[ttclab] sweep {summary['study']}: best trial {best['number']} {best['values']} {best['params']}")


_register_stages()

if __name__ == "__main__":
    main()
