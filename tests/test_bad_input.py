"""Bad input everywhere (issue 9 sections 3 and 5): each case is a command a user might type with one
thing wrong. Every one must end with exit code 2 and exactly one stderr line `error: ...` naming the
file/key, with no traceback, an intact SQLite store and no run left RUNNING.

Cases run in-process through click's CliRunner against one store per module (a subprocess costs ~4 s
of imports); `test_console_script_*` prove that the real console script behaves the same.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ttclab.cli import main

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "projects" / "euler1d.yaml"
TINY = """base: {default}
problem: {{n_cells: 32, n_snapshots: 9}}
data: {{n_trajectories: 12, path: {data}}}
model: {{width: 8, modes: 4, layers: 2}}
train: {{epochs: 1, batch_size: 16, log_every: 1}}
ttc: {{n_ics: 1, branching: 2}}
"""
SPEC = """name: {name}
project: {project}
stage: ttc
objective: {{metric: rollout_mse/h4, direction: minimize, split: val}}
n_trials: 2
sampler: {{type: random, seed: 0}}
{extra}
"""
GOOD_SPACE = "space: {arm.w_mass: {type: float, low: 0.1, high: 1.0}}"


class Lab:
    """Files shared by the cases: a tiny project, its data file, one finished train run."""

    def __init__(self, root: Path, store: Path, data: Path):
        self.root, self.store, self.data = root, store, data
        self.project = self.write("tiny.yaml", TINY.format(default=DEFAULT, data=data))

    def write(self, name: str, text: str) -> Path:
        path = self.root / name
        path.write_text(text)
        return path

    def raw(self, name: str, data: bytes) -> Path:
        (self.root / name).write_bytes(data)
        return self.root / name

    def yaml(self, name: str, text: str) -> Path:
        """A project that inherits the tiny one and adds `text`."""
        return self.write(name, f"base: {self.project}\n{text}")

    def spec(self, name: str, extra: str, sweep: str = "s1") -> Path:
        return self.write(name, SPEC.format(name=sweep, project=self.project, extra=extra))

    def h5(self, name: str, edit) -> Path:
        """A copy of the tiny data file changed by `edit(h5py.File)`."""
        path = self.root / name
        path.write_bytes(self.data.read_bytes())
        with h5py.File(path, "r+") as f:
            edit(f)
        return path

    def ckpt(self, name: str, source: Path, edit) -> Path:
        blob = torch.load(source, weights_only=True)
        edit(blob)
        torch.save(blob, self.root / name)
        return self.root / name


@pytest.fixture(scope="module")
def lab(tmp_path_factory, tracking_store_in, tiny_data_file):
    root = tmp_path_factory.mktemp("bad-input")
    with pytest.MonkeyPatch.context() as mp:
        tracking_store_in(mp, root)
        mp.chdir(root)
        lab = Lab(root, root / "mlflow.db", tiny_data_file("euler1d"))
        result = CliRunner().invoke(main, ["train", str(lab.project), "--quiet", "--device", "cpu"])
        assert result.exit_code == 0, result.output
        lab.run_id = result.output.split(" run ")[1].split()[0]
        lab.artifacts = next(root.glob(f"mlartifacts/*/{lab.run_id}/artifacts"))
        yield lab


def _nan(f):
    f["density"][0, 1, 3] = np.nan


def _drop(f):
    del f["pressure"]


def _bend_x(f):
    x = f["x-coordinate"][...]
    x[3] += 0.3 * (x[1] - x[0])
    f["x-coordinate"][...] = x


def _del(key):
    return lambda blob: blob.pop(key)


def _blocked_artifacts(L):
    """A new project whose artifact folder is taken by a file."""
    L.write("mlartifacts/ttclab_blocked", "a file where a folder goes")
    return ["generate", L.project, "--set", "name=blocked", "--set", "data.path=''"]


# id -> (argv builder, words the one error line must contain)
CASES = {
    # project YAML
    "yaml-malformed": (lambda L: ["train", L.write("m.yaml", "name: x\ntrain:\n  epochs: [3\n  lr: 1\n")],
                       ["m.yaml", "line 4"]),
    "yaml-duplicate-key": (lambda L: ["train", L.yaml("d.yaml", "train:\n  epochs: 2\n  epochs: 3\n")],
                           ["d.yaml", "epochs", "line 4"]),
    "yaml-duplicate-section": (lambda L: ["train", L.yaml("d2.yaml", "seed: 1\nseed: 2\n")], ["d2.yaml", "seed"]),
    "yaml-unknown-key": (lambda L: ["train", L.yaml("u.yaml", "train: {epochz: 3}\n")], ["train.epochz", "epochs"]),
    "yaml-unknown-section": (lambda L: ["train", L.yaml("u2.yaml", "trian: {epochs: 3}\n")], ["trian"]),
    "yaml-wrong-type": (lambda L: ["train", L.yaml("w.yaml", "train: {epochs: abc}\n")], ["train.epochs"]),
    "yaml-nan": (lambda L: ["train", L.yaml("n.yaml", "arm: {w_mass: .nan}\n")], ["arm.w_mass", "finite"]),
    "yaml-inf": (lambda L: ["train", L.yaml("i.yaml", "problem: {t_end: .inf}\n")], ["problem.t_end", "finite"]),
    "yaml-negative": (lambda L: ["train", L.yaml("neg.yaml", "train: {lr: -0.1}\n")], ["train", "lr > 0"]),
    "yaml-list-top": (lambda L: ["train", L.write("l.yaml", "- 1\n- 2\n")], ["l.yaml", "mapping"]),
    "yaml-missing-file": (lambda L: ["train", L.root / "absent.yaml"], ["absent.yaml", "no such file"]),
    "yaml-base-missing": (lambda L: ["train", L.write("b.yaml", "base: nowhere.yaml\n")], ["b.yaml: base", "nowhere.yaml"]),
    "yaml-base-not-a-name": (lambda L: ["train", L.write("bl.yaml", "base: [a.yaml, b.yaml]\n")], ["bl.yaml", "base"]),
    "yaml-type-a-list": (lambda L: ["train", L.yaml("tl.yaml", "model: {type: [fno]}\n")], ["model.type", "fno"]),
    "yaml-base-cycle": (lambda L: ["train", L.write("c.yaml", "base: c.yaml\n")], ["cycle"]),
    "yaml-problem-no-type": (lambda L: ["train", L.write("t.yaml", "problem: {n_cells: 8}\nmodel: {type: fno}\n")],
                             ["problem", "type"]),
    "yaml-unknown-problem": (lambda L: ["train", L.yaml("p.yaml", "problem: {type: heat3d}\n")],
                             ["problem.type", "euler1d"]),
    "yaml-quote-in-name": (lambda L: ["train", L.yaml("q.yaml", "name: \"it's\"\n")], ["name", "it's"]),
    "yaml-not-text": (lambda L: ["train", L.raw("bin.yaml", b"\xff\xfe\x00name")], ["bin.yaml"]),
    # --set
    "set-epochs-inf": (lambda L: ["train", L.project, "--set", "train.epochs=inf"], ["train.epochs"]),
    "set-epochs-nan": (lambda L: ["train", L.project, "--set", "train.epochs=nan"], ["train.epochs"]),
    "set-weight-nan": (lambda L: ["ttc", L.project, "--set", "arm.w_mass=nan"], ["arm.w_mass", "finite"]),
    "set-t-end-inf": (lambda L: ["train", L.project, "--set", "problem.t_end=inf"], ["problem.t_end", "finite"]),
    "set-lr-minus-inf": (lambda L: ["train", L.project, "--set", "train.lr=-inf"], ["train.lr", "finite"]),
    "set-unknown-key": (lambda L: ["train", L.project, "--set", "train.nope=1"], ["train.nope", "epochs"]),
    "set-no-equals": (lambda L: ["train", L.project, "--set", "train.epochs"], ["KEY=VALUE"]),
    "set-wrong-type": (lambda L: ["train", L.project, "--set", "train.epochs=abc"], ["train.epochs", "integer"]),
    "set-section-scalar": (lambda L: ["train", L.project, "--set", "train=3"], ["train", "mapping"]),
    "set-x-stride-0": (lambda L: ["train", L.project, "--set", "data.x_stride=0"], ["x_stride"]),
    "set-t-stride-0": (lambda L: ["train", L.project, "--set", "data.t_stride=0"], ["t_stride"]),
    "set-unknown-model": (lambda L: ["train", L.project, "--set", "model.type=unet"], ["model.type", "fno"]),
    "set-unknown-reward": (lambda L: ["ttc", L.project, "--set", "ttc.reward=magic"], ["magic", "arm"]),
    "set-quote-in-name": (lambda L: ["train", L.project, "--set", "name=a'b"], ["name"]),
    "set-negative-sigma": (lambda L: ["ttc", L.project, "--set", "sampling.latent_sigma=-1"], ["sampling"]),
    "set-unknown-limiter": (lambda L: ["train", L.project, "--set", "problem.limiter=superbee"],
                            ["problem.limiter", "minmod"]),
    "set-unknown-split": (lambda L: ["ttc", L.project, "--set", "ttc.split=holdout"], ["ttc", "split"]),
    "set-negative-horizon": (lambda L: ["ttc", L.project, "--set", "ttc.horizons=[-1]"], ["ttc", "horizons >= 1"]),
    "device-cuda-absent": (lambda L: ["train", L.project, "--device", "cuda"], ["--device cuda"]),
    "compare-without-ttc-runs": (lambda L: ["compare", L.project, "--set", "name=nothing-yet"], ["ttclab ttc"]),
    "trc-on-a-pde-project": (lambda L: ["trc", L.project], ["problem.type", "control problem"]),
    "trc-data-not-control-data": (lambda L: ["trc", REPO / "projects" / "vanderpol.yaml", "--input",
                                             f"data={L.write('ctl.pt', 'junk')}"], ["ctl.pt", "trc_data"]),
    # --input
    "input-unknown-name": (lambda L: ["ttc", L.project, "--input", "opertor=x.pt"], ["opertor", "operator"]),
    "input-no-equals": (lambda L: ["ttc", L.project, "--input", "operator"], ["NAME=URI"]),
    "input-missing-file": (lambda L: ["ttc", L.project, "--input", f"operator={L.root / 'no.pt'}"], ["no.pt"]),
    "input-runs-no-such-run": (lambda L: ["ttc", L.project, "--input", "operator=runs:/" + "0" * 32 + "/model/operator.pt"],
                               ["0" * 32]),
    "input-runs-traversal": (lambda L: ["ttc", L.project, "--input", f"operator=runs:/{L.run_id}/../../../../etc/passwd"],
                             ["runs:/"]),
    "input-runs-empty": (lambda L: ["ttc", L.project, "--input", "operator=runs:/"], ["runs:/"]),
    "input-models-missing": (lambda L: ["ttc", L.project, "--input", "operator=models:/nosuchmodel/1"], ["nosuchmodel"]),
    "input-resume-missing": (lambda L: ["train", L.project, "--input", f"resume={L.root / 'gone.pt'}"], ["gone.pt"]),
    "input-data-missing": (lambda L: ["ttc", L.project, "--set", "data.path=''", "--input", f"data={L.root / 'gone.h5'}",
                                      "--input", f"operator={L.artifacts / 'model/operator.pt'}"], ["gone.h5"]),
    "input-operator-is-a-directory": (lambda L: ["ttc", L.project, "--input", f"operator={L.artifacts / 'model'}"],
                                      ["model"]),
    "input-operator-is-data": (lambda L: ["ttc", L.project, "--input", f"operator={L.data}"], ["euler1d.h5"]),
    "input-data-is-a-checkpoint": (lambda L: ["ttc", L.project, "--set", "data.path=''", "--input",
                                              f"data={L.artifacts / 'model/operator.pt'}"], ["operator.pt"]),
    "input-resume-from-operator": (lambda L: ["train", L.project, "--input", f"resume={L.artifacts / 'model/operator.pt'}"],
                                   ["operator.pt", "optimizer"]),
    "input-prm-is-an-operator": (lambda L: ["ttc", L.project, "--set", "ttc.reward=prm", "--input",
                                            f"prm={L.artifacts / 'model/operator.pt'}"], ["operator.pt"]),
    # data files
    "data-path-missing": (lambda L: ["train", L.project, "--set", f"data.path={L.root / 'absent.h5'}"], ["absent.h5"]),
    "data-not-hdf5": (lambda L: ["train", L.project, "--set", f"data.path={L.write('text.h5', 'hello')}"], ["text.h5"]),
    "data-missing-key": (lambda L: ["train", L.project, "--set", f"data.path={L.h5('nokey.h5', _drop)}"],
                         ["nokey.h5", "pressure"]),
    "data-nan": (lambda L: ["train", L.project, "--set", f"data.path={L.h5('nan.h5', _nan)}"], ["nan.h5", "density"]),
    "data-nonuniform-x": (lambda L: ["train", L.project, "--set", f"data.path={L.h5('bent.h5', _bend_x)}"],
                          ["bent.h5", "x-coordinate"]),
    # checkpoints
    "ckpt-not-a-checkpoint": (lambda L: ["ttc", L.project, "--input", f"operator={L.write('junk.pt', 'junk')}"],
                              ["junk.pt", "not a readable ttclab checkpoint (", ": "]),
    "ckpt-missing-state-dict": (lambda L: ["ttc", L.project, "--input",
                                           f"operator={L.ckpt('nosd.pt', L.artifacts / 'model/operator.pt', _del('state_dict'))}"],
                                ["nosd.pt", "state_dict"]),
    "ckpt-resume-missing-optimizer": (lambda L: ["train", L.project, "--input",
                                                 f"resume={L.ckpt('noopt.pt', L.artifacts / 'model/last.pt', _del('optimizer'))}"],
                                      ["noopt.pt", "optimizer"]),
    "ckpt-resume-wrong-shape": (lambda L: ["train", L.project, "--set", "model.width=12", "--input",
                                           f"resume={L.artifacts / 'model/last.pt'}"], ["last.pt"]),
    "ckpt-other-problem": (lambda L: ["ttc", L.project, "--set", "problem.type=burgers1d", "--input",
                                      f"operator={L.artifacts / 'model/operator.pt'}"], ["operator.pt", "burgers1d"]),
    "artifact-store-under-a-file": (_blocked_artifacts, ["ttclab_blocked", "not a folder"]),
    # sweep specs
    "spec-unknown-key": (lambda L: ["sweep", L.spec("s1.yaml", GOOD_SPACE + "\nworkerz: 2")], ["s1.yaml", "workerz"]),
    "spec-bad-distribution": (lambda L: ["sweep", L.spec("s2.yaml", "space: {arm.w_mass: {type: normal, low: 0, high: 1}}")],
                              ["space.arm.w_mass", "normal"]),
    "spec-empty-space": (lambda L: ["sweep", L.spec("s3.yaml", "space: {}")], ["s3.yaml", "space"]),
    "spec-low-above-high": (lambda L: ["sweep", L.spec("s4.yaml", "space: {arm.w_mass: {type: float, low: 2, high: 1}}")],
                            ["space.arm.w_mass", "low < high"]),
    "spec-unknown-space-key": (lambda L: ["sweep", L.spec("s5.yaml", "space: {arm.w_mas: {type: float, low: 0, high: 1}}")],
                               ["arm.w_mas"]),
    "spec-nan-bound": (lambda L: ["sweep", L.spec("s6.yaml", "space: {arm.w_mass: {type: float, low: .nan, high: 1}}")],
                       ["space.arm.w_mass.low", "finite"]),
    "spec-quote-in-name": (lambda L: ["sweep", L.spec("s7.yaml", GOOD_SPACE, sweep="\"it's\"")], ["name"]),
    "spec-duplicate-key": (lambda L: ["sweep", L.spec("s8.yaml", GOOD_SPACE + "\nn_trials: 3")], ["n_trials", "line"]),
    # storage URLs
    "storage-malformed": (lambda L: ["sweep", L.spec("ok1.yaml", GOOD_SPACE), "--storage", "postgresql://user@:notaport/db"],
                          ["--storage"]),
    "storage-unknown-dialect": (lambda L: ["sweep", L.spec("ok2.yaml", GOOD_SPACE), "--storage", "nosuchdb://host/db"],
                                ["--storage", "nosuchdb"]),
    "storage-not-listening": (lambda L: ["sweep", L.spec("ok3.yaml", GOOD_SPACE), "--storage",
                                         "postgresql+psycopg2://user:SECRETPW@127.0.0.1:9/db"], ["--storage", "127.0.0.1"]),
    "storage-sqlite-missing-dir": (lambda L: ["sweep", L.spec("ok4.yaml", GOOD_SPACE), "--storage",
                                              f"sqlite:///{L.root}/no/such/dir/o.db"], ["--storage", "no/such/dir"]),
    "storage-under-a-file": (lambda L: ["sweep", L.spec("ok5.yaml", GOOD_SPACE), "--storage",
                                        f"{L.write('plain.txt', 'x')}/study.log"], ["--storage", "plain.txt"]),
    "storage-not-a-journal": (lambda L: ["sweep", L.spec("ok7.yaml", GOOD_SPACE), "--storage",
                                         L.write("notes.txt", "not a journal\n")], ["--storage", "notes.txt"]),
    "storage-sqlite-not-a-database": (lambda L: ["sweep", L.spec("ok8.yaml", GOOD_SPACE), "--storage",
                                                 f"sqlite:///{L.write('notes.db', 'plain text')}"], ["--storage", "notes.db"]),
    "storage-is-a-directory": (lambda L: ["sweep", L.spec("ok6.yaml", GOOD_SPACE), "--storage", str(L.root)],
                               ["--storage", "directory"]),
}


def store_state(store: Path) -> tuple[str, int]:
    with sqlite3.connect(store) as db:
        check = db.execute("PRAGMA integrity_check").fetchone()[0]
        running = db.execute("SELECT count(*) FROM runs WHERE status = 'RUNNING'").fetchone()[0]
    return check, running


def outcome(result, needles) -> str:
    """clear | vague (one line but not naming the key, or not exit 2) | traceback | accepted."""
    if result.exit_code == 0:
        return "accepted"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return "traceback"
    lines = result.stderr.strip().splitlines()
    if "Traceback" in result.output or len(lines) > 3:
        return "traceback"
    if result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") \
            and all(str(n) in lines[0] for n in needles):
        return "clear"
    return "vague"


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_clear_line(lab, case):
    if case == "device-cuda-absent" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    build, needles = CASES[case]
    args = [str(a) for a in build(lab)]
    result = CliRunner().invoke(main, args + ["--quiet"])
    got = outcome(result, needles)
    assert got == "clear", f"{case}: {got}, exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    assert "SECRETPW" not in result.output
    assert store_state(lab.store) == ("ok", 0)


def _console(args, env_extra=None, cwd=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "ttclab", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


@pytest.mark.slow
def test_console_script_config_errors_match_in_process(lab):
    bad = lab.yaml("cs.yaml", "train: {epochs: .inf}\n")
    proc = _console(["train", bad, "--quiet"], {"TTCLAB_HOME": str(lab.root),
                                                "MLFLOW_TRACKING_URI": f"sqlite:///{lab.store}"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "train.epochs" in lines[0], proc.stderr


@pytest.mark.slow
def test_console_script_storage_password_never_printed(lab):
    spec = lab.spec("cs2.yaml", GOOD_SPACE)
    proc = _console(["sweep", spec, "--quiet", "--storage", "postgresql+psycopg2://u:SECRETPW@127.0.0.1:9/db"],
                    {"TTCLAB_HOME": str(lab.root), "MLFLOW_TRACKING_URI": f"sqlite:///{lab.store}"})
    assert proc.returncode == 2, proc.stderr
    assert "SECRETPW" not in proc.stdout + proc.stderr and "u:***@127.0.0.1" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_store_urls_reach_workers_by_environment_not_argv(monkeypatch):
    from ttclab.tracking.uris import redact
    from ttclab.sweep.worker import SECRET_ENV, WorkerJob, job_from_process, job_process

    url = "postgresql+psycopg2://user:SECRETPW@db.example:5432/optuna"
    assert redact(url) == "postgresql+psycopg2://user:***@db.example:5432/optuna"
    assert redact("postgresql://user@host/db") == "postgresql://user@host/db"
    job = WorkerJob("spec.yaml", url, "postgresql://mlflow:SECRETPW@db.example/mlflow", "parent", 4, index=1)
    argv, env = job_process(job)
    assert "SECRETPW" not in argv and set(env) == set(SECRET_ENV.values())
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert job_from_process(argv) == job


def test_read_only_tracking_store_is_one_line(lab, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///file:{lab.store}?mode=ro&uri=true")
    result = CliRunner().invoke(main, ["generate", str(lab.project), "--quiet", "--seed", "7"])
    assert outcome(result, ["tracking store", "readonly database", "writable"]) == "clear", result.output
    assert store_state(lab.store) == ("ok", 0)
