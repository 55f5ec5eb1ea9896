"""Project configs (the CLI's input) and the command line: clear one-line errors, help everywhere."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ttclab.cli import main
from ttclab.config import ConfigError
from ttclab.project import load_project

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "projects" / "euler1d.yaml"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- configs -------------------------------------------------------------------------------------

def test_default_project_loads_with_overrides():
    cfg = load_project(DEFAULT, ["train.epochs=3", "train.lr=1e-3", "problem.limiter=mc"])
    assert (cfg.train.epochs, cfg.train.lr, cfg.problem.limiter) == (3, 1e-3, "mc")
    assert isinstance(cfg.train.lr, float) and cfg.problem.type == "euler1d"
    flat = cfg.flat()
    assert flat["train.epochs"] == 3 and flat["model.width"] == cfg.model.width


def test_unknown_yaml_key_lists_valid_keys(tmp_path):
    path = write(tmp_path / "p.yaml", f"base: {DEFAULT}\ntrain:\n  epochz: 3\n")
    with pytest.raises(ConfigError) as err:
        load_project(path)
    message = str(err.value)
    assert str(path) in message and "train.epochz" in message
    assert "epochs" in message and "batch_size" in message and "lr" in message


def test_unknown_top_level_section_lists_sections(tmp_path):
    path = write(tmp_path / "p.yaml", f"base: {DEFAULT}\ntrian: {{epochs: 3}}\n")
    with pytest.raises(ConfigError, match=r"unknown key trian;.*train"):
        load_project(path)


def test_unknown_override_key_fails():
    with pytest.raises(ConfigError) as err:
        load_project(DEFAULT, ["model.widht=3"])
    assert "model.widht" in str(err.value) and "width" in str(err.value)


@pytest.mark.parametrize("override, complaint", [
    ("train.epochs=abc", "must be an integer"),
    ("train.epochs=2.5", "must be an integer"),
    ("train.lr=fast", "must be a number"),
    ("model.dropout=true", "must be a number"),
    ("problem.limiter=3", "is not one of 'minmod', 'mc'"),
])
def test_wrong_type_fails(override, complaint):
    with pytest.raises(ConfigError) as err:
        load_project(DEFAULT, [override])
    assert override.split("=")[0] in str(err.value) and complaint in str(err.value)


def test_invalid_value_fails_validation():
    with pytest.raises(ConfigError, match="sum to 1"):
        load_project(DEFAULT, ["data.train=0.9"])


def test_unknown_problem_type_lists_problems():
    with pytest.raises(ConfigError, match="burgers1d.*euler1d.*euler2d"):
        load_project(DEFAULT, ["problem.type=heat3d"])


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path / "bad.yaml", "name: x\ntrain:\n  epochs: [3\n  lr: 1\n")
    with pytest.raises(ConfigError) as err:
        load_project(path)
    assert str(path) in str(err.value) and "line 4" in str(err.value) and "malformed YAML" in str(err.value)


def test_base_inheritance(tmp_path):
    parent = write(tmp_path / "parent.yaml", f"base: {DEFAULT}\ntrain: {{epochs: 7, lr: 0.01}}\n")
    (tmp_path / "sub").mkdir()
    child = write(tmp_path / "sub" / "child.yaml", "base: ../parent.yaml\nname: child\ntrain: {epochs: 5}\n")
    cfg, default = load_project(child), load_project(DEFAULT)
    assert cfg.name == "child" and cfg.train.epochs == 5  # the child wins
    assert cfg.train.lr == 0.01  # from the parent, relative to the child
    assert cfg.model == default.model and cfg.problem == default.problem  # from the grandparent


def test_base_cycle_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_project(tmp_path / "a.yaml")


# --- command line --------------------------------------------------------------------------------

def invoke(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def assert_one_line_error(result, *needles):
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0]


def test_help_on_every_command():
    result = invoke("--help")
    assert result.exit_code == 0
    for name in ("generate", "train", "ui"):
        assert name in result.output
    for name in main.commands:
        sub = invoke(name, "--help")
        assert sub.exit_code == 0, (name, sub.output)
        assert f"Usage: main {name}" in sub.output


def test_stage_commands_take_the_common_options():
    for name in ("generate", "train"):
        out = invoke(name, "--help").output
        for option in ("--set", "--device", "--seed", "--quiet"):
            assert option in out, (name, option)


def test_unknown_set_key_is_a_one_line_error(isolated_tracking):
    result = invoke("train", DEFAULT, "--set", "train.nope=1")
    assert_one_line_error(result, "train.nope", "valid keys", "epochs", "batch_size")


def test_set_without_equals_is_a_one_line_error(isolated_tracking):
    assert_one_line_error(invoke("generate", DEFAULT, "--set", "train.epochs"), "KEY=VALUE")


def test_missing_project_file_is_a_one_line_error(isolated_tracking, tmp_path):
    missing = tmp_path / "nope.yaml"
    assert_one_line_error(invoke("train", missing), str(missing), "no such file")


def test_bad_data_path_is_a_one_line_error(isolated_tracking, tmp_path):
    missing = tmp_path / "absent.h5"
    result = invoke("generate", DEFAULT, "--quiet", "--device", "cpu", "--set", f"data.path={missing}")
    assert_one_line_error(result, str(missing), "no such data file")


def test_python_dash_m_ttclab_help():
    result = subprocess.run([sys.executable, "-m", "ttclab", "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout and "train" in result.stdout


# --- bad input classes (issue 9 section 3) ------------------------------------------------------

def test_non_finite_numbers_rejected_unless_the_field_allows_them():
    import dataclasses

    from ttclab.config import build

    @dataclasses.dataclass
    class Section:
        weight: float = 1.0
        count: int = 1
        bound: float = dataclasses.field(default=0.0, metadata={"finite": False})
        scale: float | None = None

    for key, value in (("weight", float("nan")), ("count", float("inf")), ("scale", float("-inf"))):
        with pytest.raises(ConfigError, match=f"s.{key}=.* must be a finite number"):
            build(Section, {key: value}, "src", "s")
    assert build(Section, {"bound": float("inf")}).bound == float("inf")


def test_duplicate_key_in_an_override_is_an_error():
    with pytest.raises(ConfigError, match="duplicate key 'epochs'"):
        load_project(DEFAULT, ["train={epochs: 2, epochs: 3}"])


def test_unknown_registry_name_is_a_user_error_and_a_key_error():
    from ttclab.errors import UserError
    from ttclab.models import MODELS

    with pytest.raises(UserError) as err:
        MODELS.get("unet")
    assert isinstance(err.value, KeyError) and str(err.value).startswith("unknown model 'unet'; valid: ")


def test_debug_shows_the_traceback_of_a_user_error(isolated_tracking):
    result = invoke("--debug", "train", DEFAULT, "--set", "train.epochs=inf")
    assert isinstance(result.exception, ConfigError) and "train.epochs" in str(result.exception)
    assert invoke("train", DEFAULT, "--set", "train.epochs=inf").exit_code == 2


@pytest.mark.parametrize("code, fix", [(28, "free disk space"), (30, "read-only"), (13, "no permission")])
def test_full_or_read_only_disk_is_one_line(isolated_tracking, monkeypatch, code, fix):
    import os

    from ttclab.stages import Context

    def write_fails(self, name, cfg, tags=None):
        raise RuntimeError("while logging") from OSError(code, os.strerror(code), "/store/mlartifacts/x.h5")

    monkeypatch.setattr(Context, "run", write_fails)
    result = invoke("generate", DEFAULT, "--quiet", "--device", "cpu")
    assert_one_line_error(result, "/store/mlartifacts/x.h5", os.strerror(code), fix)
    assert result.exit_code == 2


def test_a_real_bug_keeps_its_traceback(isolated_tracking, monkeypatch):
    from ttclab.stages import Context

    monkeypatch.setattr(Context, "run", lambda self, name, cfg, tags=None: {}["missing"])
    result = invoke("generate", DEFAULT, "--quiet", "--device", "cpu")
    assert result.exit_code == 1 and isinstance(result.exception, KeyError)


def test_unreadable_project_file_is_a_config_error(tmp_path, monkeypatch):
    path = write(tmp_path / "p.yaml", f"base: {DEFAULT}\n")

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(ConfigError, match=r"p.yaml: cannot read it \(Permission denied\)"):
        load_project(path)


def test_the_clis_stage_table_matches_the_stage_declarations():
    from ttclab.cli import STAGE_HELP
    from ttclab.stages import STAGES

    declared = {name: STAGES.get(name).help for name in STAGES.names()}
    assert STAGE_HELP == declared, "copy the changed @stage help texts into ttclab/cli.py:STAGE_HELP"


def test_help_and_argument_errors_import_neither_torch_nor_mlflow():
    code = ("import sys\nfrom ttclab.cli import main\n"
            "for args in (['--help'], ['train', '--help'], ['ttc', '--help'], ['train'], ['ttc', '--device', 'tpu', 'p.yaml']):\n"
            "    try:\n        main(args, prog_name='ttclab')\n    except SystemExit as e:\n        assert e.code in (0, 2), (args, e.code)\n"
            "print(sorted(m for m in ('torch', 'mlflow', 'optuna', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr


# --- every command's help lists its choices, from the registries ---------------------------------

def registered() -> dict[str, tuple[str, ...]]:
    """The real names behind ttclab.cli.NAMES, read from the registries (this imports torch)."""
    from ttclab.models import MODELS, operator_names
    from ttclab.problems import PROBLEMS, PDEProblem
    from ttclab.rewards import selector_names
    from ttclab.sampling import SAMPLERS
    from ttclab.training.losses import CONTROLLER_LOSSES, OPERATOR_LOSSES, PRM_LOSSES
    from ttclab.ttc.rollout import ROLLOUTS

    pde = [n for n in PROBLEMS.names() if issubclass(PROBLEMS.get(n), PDEProblem)]
    names = {"pde_problems": pde, "control_problems": [n for n in PROBLEMS.names() if n not in pde],
             "operators": operator_names(), "controllers": [n for n in MODELS.names() if n not in operator_names()],
             "selectors": selector_names(), "samplers": SAMPLERS, "rollouts": ROLLOUTS, "operator_losses": OPERATOR_LOSSES.names(),
             "prm_losses": PRM_LOSSES.names(), "controller_losses": CONTROLLER_LOSSES.names()}
    return {kind: tuple(v) for kind, v in names.items()}


def test_the_clis_name_table_matches_the_registries():
    from ttclab.cli import NAMES

    real = registered()
    assert NAMES == real, f"a registry changed: paste into ttclab/cli.py:NAMES {real}"


def test_the_clis_value_table_matches_the_configs():
    """Literal keys: exactly their Literal's values; keys checked in validate(): every listed value is
    accepted and another one refused."""
    import typing

    from ttclab.cli import VALUES
    from ttclab.config import build
    from ttclab.models.prm import PRMConfig
    from ttclab.problems.euler import EulerConfig
    from ttclab.training.loop import TrainConfig
    from ttclab.training.triplet import TripletConfig
    from ttclab.training.trc import TRCConfig
    from ttclab.training.ttc_training import FilterConfig

    sections = {"problem": EulerConfig, "train": TrainConfig, "triplets": TripletConfig, "prm": PRMConfig,
                "trc": TRCConfig, "filter": FilterConfig}
    for key, values in VALUES.items():
        section, field = key.split(".")
        hint = typing.get_type_hints(sections[section])[field]
        if typing.get_origin(hint) is typing.Literal:
            assert values == typing.get_args(hint), f"paste into ttclab/cli.py:VALUES {key!r}: {typing.get_args(hint)}"
        for value in values:
            build(sections[section], {field: value}, "p.yaml", section)
        with pytest.raises(ConfigError):
            build(sections[section], {field: "not_a_choice"}, "p.yaml", section)


# (kind of name, command, the --set key whose help line lists them): every kind in some command's help.
HELP_LISTS = [("selectors", "ttc", "ttc.reward"), ("selectors", "compare", "ttc.reward"),
              ("selectors", "demo", "ttc.reward"), ("samplers", "ttc", "sampling.sampler"),
              ("samplers", "build_prm", "sampling.sampler"), ("rollouts", "ttc", "ttc.rollout"),
              ("operators", "train", "model.type"),
              ("controllers", "trc", "model.type"), ("pde_problems", "generate", "problem.type"),
              ("control_problems", "trc", "problem.type"), ("control_problems", "trc_data", "problem.type"),
              ("operator_losses", "train", "train.loss"), ("prm_losses", "train_prm", "prm.loss"),
              ("controller_losses", "trc", "ttclab.method")]


def help_line(command: str, key: str) -> list[str]:
    """The choices a command's --help lists for `key` (its `key  a | b | c (note)` line)."""
    out = invoke(command, "--help").output
    (line,) = [line for line in out.splitlines() if line.split()[:1] == [key]]
    return line.split(None, 1)[1].split(" (")[0].split(" | ")


@pytest.mark.parametrize("kind, command, key", HELP_LISTS)
def test_help_lists_every_registered_name(kind, command, key):
    assert help_line(command, key) == list(registered()[kind])


def test_every_registry_and_stage_is_listed_in_some_help():
    from ttclab.stages import STAGES

    assert {kind for kind, _, _ in HELP_LISTS} == set(registered())
    top = invoke("--help").output
    assert all(re.search(rf"^  {name}\b", top, re.M) for name in STAGES.names())


def test_help_keys_are_real_config_keys():
    from ttclab.cli import COMMAND_KEYS

    flat = load_project(DEFAULT).flat()
    keys = {key for entries in COMMAND_KEYS.values() for key, *_ in entries} - {"ttclab.method"}
    assert keys <= set(flat), sorted(keys - set(flat))
    assert "ttc.branching" in invoke("ttc", "--help").output and "train.epochs" in invoke("train", "--help").output
