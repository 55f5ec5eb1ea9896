"""Command line: the only module that imports click. One command per pipeline stage, plus `ui`.

Every stage command takes a project YAML, dotted `--set` overrides, `--device` and `--seed`, and
runs as one MLflow run. Bad input ends with a one-line error naming the file and the fix.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import sys
from contextlib import contextmanager

import click

from .config import ConfigError
from .errors import UserError
from .process import raise_on_sigterm

# Writes that fail for a reason the user fixes outside ttclab: errno -> what to do.
DISK_FIXES = {
    errno.ENOSPC: "free disk space there, or point TTCLAB_HOME / MLFLOW_TRACKING_URI at another disk",
    errno.EROFS: "the file system is read-only; point TTCLAB_HOME / MLFLOW_TRACKING_URI at a writable folder",
    errno.EACCES: "no permission to write there; fix its permissions or point TTCLAB_HOME / MLFLOW_TRACKING_URI "
                  "at a folder you own",
    errno.ENOTDIR: "a part of that path is a file, not a folder; move the file away or point TTCLAB_HOME / "
                   "MLFLOW_TRACKING_URI elsewhere",
    errno.EISDIR: "a folder stands where a file is written; move it away or point TTCLAB_HOME / MLFLOW_TRACKING_URI "
                  "elsewhere",
}
SQLITE_FIXES = {
    "readonly": "make the database file and its folder writable, or point MLFLOW_TRACKING_URI / TTCLAB_HOME elsewhere",
    "disk is full": DISK_FIXES[errno.ENOSPC],
    "unable to open database": "check that its folder exists and is writable",
}


def _debug() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx and (ctx.find_root().obj or {}).get("debug"))


def _fail(message: str) -> None:
    """`error: ...` on one line, also when the message quotes a multi-line library error."""
    click.echo("error: " + " ".join(line.strip() for line in message.splitlines() if line.strip()), err=True)
    sys.exit(2)


def _disk_error(err: BaseException) -> str | None:
    """The one-line message for a write that failed on a full, read-only or forbidden disk or
    SQLite store, found anywhere in the exception's chain (MLflow wraps the sqlite3 error)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in DISK_FIXES:
            return f"{err.filename or 'a write'}: {err.strerror}; {DISK_FIXES[err.errno]}"
        if isinstance(err, sqlite3.OperationalError):
            for text, fix in SQLITE_FIXES.items():
                if text in str(err):
                    from .tracking.uris import default_tracking_uri, redact

                    return f"tracking store {redact(default_tracking_uri())}: {err}; {fix}"
        err = err.__cause__ or err.__context__
    return None


@contextmanager
def reported():
    """UserError -> `error: <one line>` and exit 2 (with --debug: the traceback); a disk that is full,
    read-only or not ours -> the same; every other exception is a bug and keeps its traceback."""
    try:
        yield
    except UserError as err:
        if _debug():
            raise
        _fail(str(err))
    except Exception as err:
        message = _disk_error(err)
        if message is None or _debug():
            raise
        _fail(message)


def _parse_inputs(stage: str, items: tuple[str, ...]) -> dict[str, str]:
    from .stages import input_names

    valid = input_names(stage)
    out = {}
    for item in items:
        name, sep, uri = item.partition("=")
        if not sep:
            raise ConfigError(f"--input {item!r}: expected NAME=URI, e.g. --input operator=runs:/<id>/model/operator.pt")
        if name not in valid:
            raise ConfigError(f"--input {name}=...: stage {stage!r} takes no input {name!r}; valid: "
                              f"{', '.join(valid) or 'none'}")
        if uri:  # an empty URI (an unset MLproject parameter) means get-or-run
            out[name] = uri
    return out


def run_stage(name: str, project: str, overrides, device: str, seed, inputs, quiet: bool, tracking_uri=None):
    from .project import load_project
    from .stages import Context, resolve_device, configure_process, unread_inputs
    from .tracking.follower import Follower
    from .tracking.store import Tracker
    from .training import distributed

    sets = list(overrides) + ([f"seed={seed}"] if seed is not None else [])
    with reported():
        try:
            given = _parse_inputs(name, inputs)
            cfg = load_project(project, sets)
            unread = unread_inputs(name, cfg, given)
            if unread:
                raise ConfigError(f"--input {unread[0]}=...: `{name}` does not read {unread[0]!r} with this config "
                                  "(e.g. prm only when ttc.reward is prm, data only without data.path); drop it")
            if distributed.launched() and name not in DISTRIBUTED_STAGES:
                raise ConfigError(f"torchrun runs the training stages ({', '.join(DISTRIBUTED_STAGES)}) data-parallel; "
                                  f"run `ttclab {name}` without torchrun")
            # Under torchrun every rank runs the stage and trains its shard; rank 0 alone logs the run.
            tracker = Tracker(tracking_uri) if distributed.rank() == 0 else Follower(Tracker(tracking_uri))
            main_rank = distributed.rank() == 0
            ctx = Context(tracker, distributed.init_from_env(resolve_device(device)), progress=not quiet and main_rank,
                          inputs=given)
            configure_process()
            try:
                run_id, outputs = ctx.run(name, cfg)
            finally:
                distributed.shutdown()
        except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM as Terminated
            click.echo("interrupted: the run was marked KILLED", err=True)
            sys.exit(getattr(err, "exit_code", 130))
    if main_rank:
        click.echo(f"[ttclab] {name} run {run_id} finished ({ctx.tracker.where(run_id, cfg.name)})")
    return outputs


DISTRIBUTED_STAGES = ("train", "train_prm", "trc")  # the stages whose work is the one loop (training/loop.py:fit)


def stage_command(name: str, help_text: str) -> click.Command:
    @click.command(name=name, help=help_text, epilog=epilog(name))
    @click.argument("project", type=click.Path(dir_okay=False))
    @click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                  help="Dotted config override, e.g. --set train.epochs=3 (repeatable).")
    @click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]), show_default=True)
    @click.option("--seed", type=int, default=None, help="Overrides the project's seed.")
    @click.option("--input", "inputs", multiple=True, metavar="NAME=URI",
                  help="Use this upstream result instead of get-or-run, e.g. operator=runs:/<id>/model/operator.pt, "
                       "resume=<checkpoint> (runs:/, models:/ or a path); an ensemble's members as operator=URI0,URI1,...")
    @click.option("--overrides", "joined", default="", metavar="'K=V K=V'",
                  help="Space-separated KEY=VALUE overrides in one string (for MLproject parameters).")
    @click.option("--quiet", is_flag=True, help="No progress bars.")
    def command(project, overrides, device, seed, inputs, joined, quiet, seeds=(), nproc=1):
        if nproc > 1:
            return _torchrun(name, nproc, project, overrides, device, seed, inputs, joined, quiet)
        sets = list(overrides) + joined.split()
        for s in seeds:  # one run per candidate seed, then the table that aggregates them (mean +- s.e.)
            run_stage(name, project, sets + [f"sampling.seed={s}"], device, seed, inputs, quiet)
        if seeds:
            return run_stage("compare", project, sets, device, seed, (), quiet)
        run_stage(name, project, sets, device, seed, inputs, quiet)

    if name in DISTRIBUTED_STAGES:
        command = click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
                               help="Train data-parallel on this many local processes (torchrun; gloo on CPU, "
                                    "nccl on GPUs).")(command)
    if name == "ttc":
        command = click.option("--seeds", callback=_seed_list, default="", metavar="0,1,2",
                               help="Run once per candidate seed (sampling.seed), then `compare` aggregates them.")(command)
    return command


def _torchrun(name: str, nproc: int, project, overrides, device, seed, inputs, joined, quiet) -> None:
    """`--nproc N`: the same command data-parallel on N local processes, started by torchrun
    (`python -m torch.distributed.run --standalone --nproc-per-node N -m ttclab <name> ...`)."""
    from .process import run_forwarding

    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m",
            "ttclab"] + (["--debug"] if _debug() else []) + [name, project, f"--device={device}", f"--overrides={joined}"]
    argv += [f"--set={o}" for o in overrides] + [f"--input={i}" for i in inputs]
    argv += ([f"--seed={seed}"] if seed is not None else []) + (["--quiet"] if quiet else [])
    sys.exit(run_forwarding(argv))


def _seed_list(ctx, param, value: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in value.split(",") if s.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected comma-separated integers, e.g. --seeds 0,1,2") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show the traceback of input errors too (e.g. ttclab --debug train ...).")
@click.pass_context
def main(ctx, debug):
    """ttclab: test-time computing on learned PDE simulators, tracked in MLflow.

    `ttclab <command> --help` lists the command's choices (selectors, samplers, model types, losses)
    and the --set keys set most."""
    ctx.obj = {"debug": debug}
    if not debug:  # MLflow logs a failed SQL write with its traceback before raising it; we report it in one line
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    raise_on_sigterm()  # `kill`, `timeout` and schedulers end a run KILLED (exit 143), like Ctrl-C


# Each stage's help, copied from its @stage declaration (tests/test_cli.py checks they agree), so
# `ttclab --help` and argument errors answer without importing torch and mlflow (~2 s idle, far
# more on a loaded machine); a stage's modules are imported only when it runs.
STAGE_HELP = {
    "build_prm": "Rank K stochastic candidates per state on a fraction of the train ICs; log prm/triplets.h5.",
    "compare": "Side-by-side table of the latest ttc runs per selector (printed and logged as artifacts).",
    "demo": "Whole pipeline: data, operator, PRM, every TTC selector with controls, comparison table.",
    "filter": "Keep the train ICs whose operator rollouts score best by filter.reward; log the filtered data file.",
    "generate": "Generate the data set (or check an existing PDEBench file named by data.path).",
    "train": "Train the operator; log losses, rollout errors and the checkpoint (model/operator.pt).",
    "train_prm": "Train the PRM on ranked candidates; log held-out ranking metrics and model/prm.pt.",
    "trc": "Train the tiny recursive controller (BC, or process supervision when trc.process_weight > 0).",
    "trc_data": "Draw the control problems' train/val/test splits and solve them with the teacher.",
    "ttc": "Run one TTC selector (ttc.reward: baseline | random | ensemble | arm | prm | oracle) with its controls "
           "on held-out ICs.",
}


# Names from the registries and config Literals that --help lists, copied here for the same reason
# (tests/test_cli.py checks each against its source and prints the line to paste when one changes).
NAMES = {
    "pde_problems": ("burgers1d", "euler1d", "euler2d"),  # PROBLEMS: PDEProblem subclasses
    "control_problems": ("double_integrator", "vanderpol"),  # PROBLEMS: the others
    "operators": ("fno", "upt"),  # models.operator_names()
    "controllers": ("trc",),  # MODELS: the others
    "selectors": ("baseline", "random", "ensemble", "arm", "prm", "oracle"),  # rewards.selector_names()
    "samplers": ("mc_dropout", "latent_noise", "input_perturb", "ensemble"),  # sampling.SAMPLERS
    "rollouts": ("physical", "latent"),  # ttc.rollout.ROLLOUTS
    "operator_losses": ("unrolled_mse", "upt_inverse"),  # training.losses.OPERATOR_LOSSES
    "prm_losses": ("bradley_terry", "triplet"),  # PRM_LOSSES
    "controller_losses": ("bc", "ps"),  # CONTROLLER_LOSSES (trc.process_weight 0 -> bc, > 0 -> ps)
}
VALUES = {  # config key -> the values it accepts (a Literal, or the tuple its validate() checks)
    "problem.ic": ("smooth", "riemann", "blast"),
    "train.amp": ("none", "bf16", "fp16"),
    "train.loss_weighting": ("none", "reward"),
    "train.sampling": ("uniform", "hard"),
    "train.target": ("truth", "best_of_n"),
    "triplets.states": ("rollout", "truth", "mixed"),
    "triplets.label": ("next", "horizon"),
    "prm.head": ("reference", "local"),
    "prm.anchor": ("operator", "set_mean"),
    "prm.select": ("ranking", "loss"),
    "trc.test_time": ("none", "more_cycles", "best_of_n"),
    "trc.test_verifier": ("value", "oracle", "random"),
    "filter.reward": ("arm", "prm", "oracle"),
    "filter.keep": ("best", "worst"),
}
_N = NAMES
# Per command, the keys users set most: (key, choices[, note]) or (key, what it does).
COMMAND_KEYS = {
    "generate": [("problem.type", _N["pde_problems"]), ("problem.ic", VALUES["problem.ic"]),
                 ("data.n_trajectories", "trajectories to generate (or the most to read from data.path)"),
                 ("data.path", "an existing PDEBench-layout HDF5 file instead of generating"),
                 ("problem.n_cells", "cells per axis")],
    "train": [("model.type", _N["operators"]), ("train.loss", _N["operator_losses"]),
              ("train.amp", VALUES["train.amp"]), ("train.loss_weighting", VALUES["train.loss_weighting"]),
              ("train.sampling", VALUES["train.sampling"]), ("train.target", VALUES["train.target"]),
              ("train.epochs", "epochs (best validation epoch kept)"), ("train.lr", "AdamW learning rate"),
              ("train.batch_size", "samples per optimizer step"), ("train.unroll", "> 1: k-step autoregressive loss"),
              ("train.lambda_inv_enc", "loss=upt_inverse: weight of MSE(D(E(u)), u); also lambda_inv_dec, "
               "inverse_warmup_epochs"),
              ("train.query_sampling.enabled", "loss=upt_inverse: decode at query_sampling.num_queries cells "
               "(strategy uniform | stratified)"),
              ("seed", "weights seed; --input init=<operator.pt> fine-tunes")],
    "build_prm": [("sampling.sampler", _N["samplers"], "(combine with +)"),
                  ("triplets.states", VALUES["triplets.states"]), ("triplets.label", VALUES["triplets.label"]),
                  ("triplets.k", "candidates ranked per state"), ("triplets.fraction", "of the train ICs used"),
                  ("triplets.horizon", "label=horizon: steps each candidate is continued")],
    "train_prm": [("prm.loss", _N["prm_losses"]), ("prm.head", VALUES["prm.head"]),
                  ("prm.anchor", VALUES["prm.anchor"]), ("prm.select", VALUES["prm.select"]),
                  ("prm.epochs", "epochs"), ("prm.lr", "learning rate"),
                  ("prm.set_size", "candidates scored together (match ttc.branching)")],
    "trc_data": [("problem.type", _N["control_problems"])],
    "trc": [("problem.type", _N["control_problems"]), ("model.type", _N["controllers"]),
            ("ttclab.method", _N["controller_losses"], "(the run's tag; trc.process_weight 0 = bc, > 0 = ps)"),
            ("trc.test_time", VALUES["trc.test_time"]), ("trc.test_verifier", VALUES["trc.test_verifier"]),
            ("trc.process_weight", "weight of process supervision (0 = behaviour cloning only)"),
            ("trc.epochs", "epochs"), ("trc.test_n", "candidates or cycle multiplier at test time")],
    "ttc": [("ttc.reward", _N["selectors"]), ("sampling.sampler", _N["samplers"], "(combine with +)"),
            ("ttc.rollout", _N["rollouts"], "(latent: step the operator's latent; UPT)"),
            ("ttc.branching", "N candidates per kept trajectory and step"),
            ("ttc.beam", "K kept trajectories per IC (1 = greedy)"),
            ("ttc.project_conservation", "true: project candidates onto the IC's conserved totals"),
            ("ttc.split", "test for reported numbers, val while tuning"), ("ttc.n_ics", "0 = every IC of the split"),
            ("sampling.seed", "candidate seed (--seeds 0,1,2 runs several)"),
            ("sampling.latent_sigma", "latent noise scale"), ("sampling.input_eps", "input noise scale")],
    "compare": [("ttc.reward", _N["selectors"], "(one row each; +proj rows after)"),
                ("sampling.sampler", _N["samplers"]),
                ("ttc.branching", "the N of the runs to compare"), ("ttc.beam", "their K"),
                ("ttc.split", "their split"),
                ("compare.across", "selectors (default) | operators: every project's ttc runs on these ICs, "
                                   "a row per operator, loss, rollout and selector")],
    "demo": [("ttc.reward", _N["selectors"], "(every one is run)"), ("sampling.sampler", _N["samplers"]),
             ("ttc.branching", "N candidates per step"), ("train.epochs", "operator epochs")],
    "filter": [("filter.reward", VALUES["filter.reward"]), ("filter.keep", VALUES["filter.keep"]),
               ("filter.keep_fraction", "of the train ICs kept"), ("filter.threshold", "keep by score instead"),
               ("filter.rounds", "> 1: train -> filter repeated")],
}


def epilog(name: str) -> str:
    """The `--set` keys of a command's help: choices as `a | b | c`, then what the other keys do.
    Click rewraps paragraphs; `\\b` keeps these lines as they are."""
    lines = ["\b", "Keys (--set KEY=VALUE); choices come from the registries:"]
    for key, what, *note in COMMAND_KEYS.get(name, ()):
        text = " | ".join(what) if isinstance(what, tuple) else what
        lines.append(f"  {key:26s}{' ' if len(key) >= 26 else ''}{' '.join([text, *note])}")
    return "\n".join(lines) if len(lines) > 2 else ""


def _register_stages():
    for name, help_text in STAGE_HELP.items():
        main.add_command(stage_command(name, help_text))


@main.command()
@click.argument("project", required=False, type=click.Path(dir_okay=False))
@click.option("--port", default=5000, show_default=True)
def ui(project, port):
    """Open the MLflow UI on 127.0.0.1 over ttclab's store (and print the runs-table address)."""
    from .tracking.store import serve_ui

    name = None
    if project:
        from .project import load_project

        with reported():
            name = load_project(project).name
    with reported():
        code = serve_ui(port, name)
    sys.exit(code)


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
    from .stages import configure_process
    from .sweep import run_sweep

    configure_process()
    with reported():
        try:
            summary = run_sweep(spec, workers=workers, n_trials=n_trials or None, storage=storage, fresh=not resume,
                                device=device, quiet=quiet)
        except KeyboardInterrupt as err:
            click.echo("interrupted: running trials were marked failed and will be retried on resume", err=True)
            sys.exit(getattr(err, "exit_code", 130))
    if summary and quiet:
        best = summary["best"]
        click.echo(f"[ttclab] sweep {summary['study']}: best trial {best['number']} {best['values']} {best['params']}")


_register_stages()

if __name__ == "__main__":
    main()
