"""The stage graph, declared once in @stage(inputs=...): its shape, the run keys and needs that follow
from it, the one accessor ctx.input, the sweep's shared upstream runs, and the MLproject / README
listings of the same inputs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ttclab.project import load_project
from ttclab.stages import STAGES, Context, input_names, unread_inputs
from ttclab.sweep import load_spec
from ttclab.sweep.runner import shared_upstream

REPO = Path(__file__).resolve().parents[1]
PROJECT = REPO / "projects" / "euler1d.yaml"


def record_inputs(monkeypatch) -> tuple[dict, dict]:
    """Patch Context so every stage run notes the input names its config needs (per the declaration)
    and the names its code reads through ctx.input: -> (needed, read), both {stage: set of names}."""
    needed: dict[str, set] = {}
    read: dict[str, set] = {}
    run, get = Context.run, Context.input

    def recording_run(self, name, cfg, tags=None):
        needed.setdefault(name, set()).update(inp.name for inp in STAGES.get(name).needed(cfg))
        return run(self, name, cfg, tags)

    def recording_input(self, name, cfg):
        read.setdefault(self.stage, set()).add(name)
        return get(self, name, cfg)

    monkeypatch.setattr(Context, "run", recording_run)
    monkeypatch.setattr(Context, "input", recording_input)
    return needed, read


def assert_reads_match_declaration(needed: dict, read: dict) -> None:
    assert set(read) <= set(needed)
    for name, names in needed.items():
        assert read.get(name, set()) == names, name


def test_graph_is_acyclic_and_every_source_is_a_stage():
    state: dict[str, str] = {}

    def visit(name, path):
        assert state.get(name) != "open", f"cycle: {' -> '.join(path + [name])}"
        if state.get(name) == "done":
            return
        state[name] = "open"
        for inp in STAGES.get(name).inputs:
            if inp.source is not None:
                assert inp.source in STAGES, (name, inp.name, inp.source)
                visit(inp.source, path + [name])
        state[name] = "done"

    for name in STAGES.names():
        visit(name, [])


def test_keys_and_needs_follow_from_the_inputs():
    cfg = load_project(PROJECT)
    key = {name: set(STAGES.get(name).key) for name in STAGES.names()}
    assert key["train"] == {"problem", "data", "model", "train", "seed"}
    assert key["trc"] == {"problem", "model", "trc", "seed"}
    # A ttc run can read a PRM, so the PRM's sections are part of its key (and comparison key).
    assert key["ttc"] == {"problem", "data", "model", "train", "seed", "sampling", "ttc", "arm", "triplets", "prm"}
    for name in STAGES.names():
        for inp in STAGES.get(name).inputs:
            assert inp.source is None or key[inp.source] <= key[name], (name, inp.name)
    assert key["compare"] == key["ttc"]  # the table is made of ttc runs: the same sections decide it
    assert STAGES.get("ttc").needs(cfg) == ("generate", "train")
    prm_cfg = load_project(PROJECT, ["ttc.reward=prm"])
    assert STAGES.get("ttc").needs(prm_cfg) == ("generate", "train", "train_prm")
    assert STAGES.get("train").needs(load_project(PROJECT, ["data.path=x.h5"])) == ()
    assert STAGES.get("trc").needs(cfg) == ("trc_data",)
    assert input_names("train") == ("data", "resume", "init", "prm") and input_names("generate") == ()


class FakeTracker:
    def __init__(self):
        self.found: list[str] = []

    def resolve(self, uri, file=""):
        return Path("/resolved") / uri

    def find(self, project, stage, key):
        self.found.append(stage)
        return f"run-of-{stage}"

    def artifact_dir(self, run_id):
        return Path("/artifacts") / run_id


def test_ctx_input_resolves_given_uris_and_gets_or_runs_the_declared_artifact():
    cfg = load_project(PROJECT, ["ttc.reward=prm"])
    tracker = FakeTracker()
    ctx = Context(tracker, inputs={"operator": "op.pt"}, stage="ttc")
    assert ctx.input("operator", cfg) == Path("/resolved/op.pt")
    assert ctx.input("data", cfg) == Path("/artifacts/run-of-generate/data/euler1d.h5")
    assert ctx.input("prm", cfg) == Path("/artifacts/run-of-train_prm/model/prm.pt")
    assert tracker.found == ["generate", "train_prm"]
    assert Context(tracker, stage="train").input("resume", cfg) is None  # optional, not given


@pytest.mark.parametrize("stage, name, sets, fragment", [
    ("ttc", "resume", [], "declares only ('data', 'operator', 'prm')"),
    ("ttc", "prm", ["ttc.reward=arm"], "says this config does not need"),
    ("train", "data", ["data.path=x.h5"], "says this config does not need"),
])
def test_reading_an_undeclared_input_is_a_bug_that_names_the_stage(stage, name, sets, fragment):
    with pytest.raises(LookupError, match=re.escape(fragment)) as err:
        Context(FakeTracker(), stage=stage).input(name, load_project(PROJECT, sets))
    assert repr(stage) in str(err.value)


@pytest.mark.parametrize("stage, sets, given, unread", [
    ("ttc", ["ttc.reward=arm"], ["operator", "prm"], ["prm"]),
    ("ttc", ["ttc.reward=prm"], ["data", "operator", "prm"], []),
    ("train", ["data.path=x.h5"], ["data", "resume"], ["data"]),
    ("train_prm", ["prm.anchor=set_mean"], ["operator"], []),  # build_prm, run first if need be, reads it
])
def test_given_inputs_that_no_stage_would_read_are_found(stage, sets, given, unread):
    assert unread_inputs(stage, load_project(PROJECT, sets), given) == unread


def test_cli_refuses_an_input_the_config_never_reads(isolated_tracking):
    from click.testing import CliRunner

    from ttclab.cli import main

    result = CliRunner().invoke(main, ["ttc", str(PROJECT), "--set", "ttc.reward=arm", "--input", "prm=p.pt"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: --input prm=...: `ttc` does not read 'prm'") and "ttc.reward" in line


def write_spec(folder: Path, stage: str, space: dict, fixed: dict | None = None) -> Path:
    path = folder / f"{stage}-{len(list(folder.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "project": str(PROJECT), "stage": stage, "n_trials": 2,
                                    "objective": {"metric": "m"}, "fixed": fixed or {}, "space": space}))
    return path


LR = {"train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2}}
WIDTH = {"model.width": {"type": "int", "low": 8, "high": 16}}
REWARD = {"ttc.reward": {"type": "categorical", "choices": ["arm", "prm"]}}
SIGMA = {"sampling.latent_sigma": {"type": "float", "low": 0.01, "high": 0.1}}


@pytest.mark.parametrize("stage, space, fixed, expected", [
    ("train", LR, None, ["generate"]),
    ("ttc", SIGMA, {"ttc.reward": "arm"}, ["generate", "train"]),
    ("ttc", WIDTH, None, ["generate"]),  # every operator differs: only the data is shared
    ("ttc", REWARD, None, ["generate", "train", "build_prm", "train_prm"]),  # the prm choice needs the PRM
    ("ttc", SIGMA, {"ttc.reward": "prm"}, ["generate", "train"]),  # the PRM's candidates depend on sampling
    ("train_prm", {"prm.lr": LR["train.lr"]}, None, ["generate", "train", "build_prm"]),
    ("trc", {"trc.process_weight": {"type": "float", "low": 0.0, "high": 1.0}}, None, ["trc_data"]),
    ("generate", {"data.seed": {"type": "int", "low": 0, "high": 3}}, None, []),
])
def test_sweep_precomputes_the_declared_closure_minus_swept_sections(tmp_path, stage, space, fixed, expected):
    spec = load_spec(write_spec(tmp_path, stage, space, fixed))
    assert shared_upstream(spec, spec.config({})) == expected


def test_every_shipped_sweep_shares_what_no_swept_key_changes(monkeypatch):
    monkeypatch.chdir(REPO)
    for path in sorted((REPO / "sweeps").glob("*.yaml")):
        spec = load_spec(path)
        shared = shared_upstream(spec, spec.config({}))
        swept = {key.split(".")[0] for key in spec.space}
        assert shared and all(not swept & set(STAGES.get(name).key) for name in shared), path.name
        assert spec.stage not in shared


def entry_points():
    for name, entry in yaml.safe_load((REPO / "MLproject").read_text())["entry_points"].items():
        words = entry["command"].split()
        if words[:3] == ["python", "-m", "ttclab"] and words[3] in STAGES:
            yield name, words[3], entry


@pytest.mark.parametrize("entry, stage, spec", list(entry_points()), ids=[e for e, _, _ in entry_points()])
def test_mlproject_entry_points_take_each_declared_input_as_a_parameter(entry, stage, spec):
    given = re.findall(r"--input (\w+)=\{(\w+)\}", spec["command"])
    assert given == [(n, n) for n in input_names(stage)], entry
    assert all(spec["parameters"][n]["default"] == "" for n in input_names(stage))  # empty = get-or-run


def test_readme_lists_each_stages_input_names():
    text = (REPO / "README.md").read_text()
    table = text[text.index("| stage | `--input` names |"):].split("\n\n")[0].splitlines()[2:]
    listed = {}
    for row in table:
        stage, names = [cell.strip() for cell in row.strip("|").split("|")]
        listed[stage.strip("`")] = tuple(re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", names)))
    assert listed == {name: input_names(name) for name in STAGES.names() if input_names(name)}
