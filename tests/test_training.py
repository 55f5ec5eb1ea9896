"""Operator training loop and checkpoints: learning, round trips, wrong checkpoints, resume."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ttclab.data.datasets import SplitData
from ttclab.models import make_model
from ttclab.problems import make_problem
from ttclab.models import checkpoint
from ttclab.models.checkpoint import CheckpointError
from ttclab.models.prm import PRM, PRMConfig
from ttclab.models.trc import TRCModelConfig
from ttclab.problems.control.double_integrator import DoubleIntegratorConfig
from ttclab.config import ConfigError, build
from ttclab.training.loop import TrainConfig, TrainingError, evaluate, train
from ttclab.training.losses import OPERATOR_LOSSES, unrolled_mse
from ttclab.training.trc import TRCConfig, fit, with_teacher_cost
from ttclab.training.triplet import train as train_prm


@pytest.fixture
def setup(tiny_project, tiny_data_file):
    """(config, problem, data, normalized train pairs, normalized val pairs) of the tiny euler1d."""
    cfg = tiny_project("euler1d")
    problem = make_problem(cfg.problem)
    data = SplitData(tiny_data_file("euler1d"), problem, cfg.data)

    def normalized(split):
        x, y = data.pairs(split)
        return data.normalizer.encode(x, 1), data.normalizer.encode(y.flatten(0, 1), 1).view(y.shape)

    return cfg, problem, data, normalized("train"), normalized("val")


def new_model(cfg, problem, seed=0):
    torch.manual_seed(seed)
    return make_model(cfg.model, n_fields=problem.n_fields, ndim=problem.ndim)


def save(path, cfg, model, data, **extra):
    return checkpoint.save(path, problem_cfg=cfg.to_dict()["problem"], model_cfg=cfg.to_dict()["model"],
                           normalizer=data.normalizer, model=model, **extra)


def test_training_lowers_the_loss(setup):
    cfg, problem, data, train_pairs, val_pairs = setup
    model = new_model(cfg, problem)
    before = evaluate(model, *train_pairs, 64, "cpu"), evaluate(model, *val_pairs, 64, "cpu")
    logged = []
    tcfg = dataclasses.replace(cfg.train, epochs=6, batch_size=8, lr=1e-2)
    state = train(model, train_pairs, val_pairs, tcfg, log=lambda m, s: logged.append((s, m)), progress=False)
    after = evaluate(model, *train_pairs, 64, "cpu"), evaluate(model, *val_pairs, 64, "cpu")
    assert after[0] < 0.5 * before[0] and after[1] < 0.5 * before[1]
    steps_per_epoch = -(-len(train_pairs[0]) // 8)
    assert state["epoch"] == 6 and state["step"] == 6 * steps_per_epoch
    val_points = [m["val/loss"] for _, m in logged if "val/loss" in m]
    assert len(val_points) == 6 and state["best_val"] == min(val_points)
    assert len([m for _, m in logged if "train/loss" in m]) == 6 * steps_per_epoch  # log_every = 1


def test_checkpoint_round_trip_gives_identical_predictions(tmp_path, setup):
    cfg, problem, data, train_pairs, _ = setup
    model = new_model(cfg, problem, seed=3).eval()
    path = save(tmp_path / "operator.pt", cfg, model, data)
    loaded, normalizer, loaded_problem = checkpoint.load_operator(path, expect_problem="euler1d")
    u = train_pairs[0][:5]
    assert torch.equal(loaded(u), model(u))
    assert not loaded.training
    assert torch.equal(normalizer.mean, data.normalizer.mean) and torch.equal(normalizer.std, data.normalizer.std)
    assert loaded_problem.name == "euler1d" and loaded_problem.shape == problem.shape
    # Plain tensors and dicts only: loadable without unpickling code.
    assert torch.load(path, weights_only=True)["format"] == checkpoint.FORMAT


def test_checkpoint_for_another_problem_is_refused(tmp_path, setup):
    cfg, problem, data, _, _ = setup
    path = save(tmp_path / "operator.pt", cfg, new_model(cfg, problem), data)
    with pytest.raises(CheckpointError) as err:
        checkpoint.load_operator(path, expect_problem="burgers1d")
    assert str(path) in str(err.value) and "'euler1d'" in str(err.value) and "'burgers1d'" in str(err.value)


def test_checkpoint_with_mismatched_weights_is_refused(tmp_path, setup):
    cfg, problem, data, _, _ = setup
    wider = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, width=16))
    # Config says width 8, weights are width 16: a corrupt file or one from another version.
    path = save(tmp_path / "operator.pt", cfg, new_model(wider, problem), data)
    with pytest.raises(CheckpointError) as err:
        checkpoint.load_operator(path)
    assert str(path) in str(err.value) and "weights do not match" in str(err.value)
    assert "lift.weight" in str(err.value)


def test_non_checkpoint_files_are_refused(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable ttclab checkpoint"):
        checkpoint.read(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a ttclab.operator/1 checkpoint"):
        checkpoint.read(foreign)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        checkpoint.read(tmp_path / "absent.pt")


class Interrupted(Exception):
    pass


def test_resume_from_last_checkpoint_continues_where_it_stopped(tmp_path, setup):
    """Crash after epoch 2 of 4, resume from the saved last.pt: epochs 3-4 run and the weights end
    up where an uninterrupted run puts them (exactly so without dropout, whose masks come from the
    global RNG that a checkpoint does not store)."""
    cfg, problem, data, train_pairs, val_pairs = setup
    tcfg = dataclasses.replace(cfg.train, epochs=4, batch_size=8)
    reference = new_model(cfg, problem)
    train(reference, train_pairs, val_pairs, tcfg, progress=False)

    last = tmp_path / "last.pt"
    model = new_model(cfg, problem)

    def save_then_crash(epoch, val, state):
        save(last, cfg, model, data, **{k: v for k, v in state.items() if k != "state_dict"})
        if epoch == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(model, train_pairs, val_pairs, tcfg, on_epoch=save_then_crash, progress=False)

    resumed_epochs, steps = [], []
    fresh = new_model(cfg, problem, seed=123)  # resume must not depend on the initial weights
    final = train(fresh, train_pairs, val_pairs, tcfg, resume=last, progress=False,
                  on_epoch=lambda epoch, val, state: resumed_epochs.append(epoch),
                  log=lambda metrics, step: steps.append(step))
    steps_per_epoch = -(-len(train_pairs[0]) // 8)
    assert resumed_epochs == [3, 4]
    assert min(steps) == 2 * steps_per_epoch + 1 and final["step"] == 4 * steps_per_epoch
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value, msg=key)



@pytest.fixture
def last_pt(tmp_path, setup):
    """A last.pt after one epoch of the tiny operator, as the train stage writes it."""
    cfg, problem, data, train_pairs, val_pairs = setup
    model = new_model(cfg, problem)
    path = tmp_path / "last.pt"
    train(model, train_pairs, val_pairs, dataclasses.replace(cfg.train, epochs=1), progress=False,
          on_epoch=lambda e, v, state: save(path, cfg, model, data,
                                            **{k: x for k, x in state.items() if k != "state_dict"}))
    return path


@pytest.mark.parametrize("key", ["optimizer", "scheduler", "best_state"])
def test_resume_from_a_checkpoint_missing_a_key_names_file_and_key(tmp_path, setup, last_pt, key):
    cfg, problem, _, train_pairs, val_pairs = setup
    blob = torch.load(last_pt, weights_only=True)
    del blob[key]
    torch.save(blob, broken := tmp_path / "broken.pt")
    with pytest.raises(CheckpointError) as err:
        train(new_model(cfg, problem), train_pairs, val_pairs, cfg.train, resume=broken, progress=False)
    message = str(err.value)
    assert str(broken) in message and repr(key) in message and "\n" not in message


def test_resume_into_another_architecture_names_the_mismatching_shapes(setup, last_pt):
    cfg, problem, _, train_pairs, val_pairs = setup
    wider = new_model(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, width=16)), problem)
    before = {k: v.clone() for k, v in wider.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        train(wider, train_pairs, val_pairs, cfg.train, resume=last_pt, progress=False)
    message = str(err.value)
    assert str(last_pt) in message and "another architecture" in message and "\n" not in message
    assert "8" in message and "16" in message  # the file's and the model's shapes
    assert all(torch.equal(v, before[k]) for k, v in wider.state_dict().items())  # refused before loading


# Loss values printed by the three separate loops before they became one (commit "pin ..."): the
# shared loop must reproduce them on the same seeds, so the refactor changed no numbers.
PINNED = {
    "operator": [1.6841893196105957, 1.0866849422454834, 1.3803305625915527, 1.3702216148376465,
                 1.2410041093826294, 1.2935147285461426, 1.4030978679656982, 1.1181681156158447,
                 1.3611786365509033, 1.213531494140625],
    "prm": [0.0881713479757309, 0.10540662954250972, 0.08892818540334702, 0.08920787771542867,
            0.08842122554779053, 0.09879615157842636, 0.08829853683710098],
    "trc_bc": [6.342813014984131, 6.324553966522217, 7.339052677154541, 1303.8009508243688,
               6.29024076461792, 6.108439922332764, 6.673401355743408, 1218.3743967940427],
    "trc_ps": [938.9498901367188, 844.9942016601562, 777.2987670898438, 954.4401450514113,
               635.8045654296875, 451.9617919921875, 939.904296875, 884.3530642584614],
}


def operator_losses(**train_overrides):
    """A circular conv on random fields, 2-step unrolled targets: the loop alone, independent of the
    FNO and of the data generator (both may change without changing the loop)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, 16, generator=g)
    y = torch.stack([torch.roll(x, 1, -1), torch.roll(x, 2, -1)], 1) + 0.1 * torch.randn(40, 2, 3, 16, generator=g)
    torch.manual_seed(0)
    model = torch.nn.Conv1d(3, 3, 3, padding=1, padding_mode="circular")
    logged = []
    cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-2, log_every=1, **train_overrides)
    train(model, (x[:32], y[:32]), (x[32:], y[32:]), cfg, seed=0, log=lambda m, s: logged.append(m), progress=False)
    return [m.get("train/loss", m.get("val/loss")) for m in logged]


def prm_data(n, k, seed):
    g = torch.Generator().manual_seed(seed)
    state = torch.randn(n, 2, 16, generator=g)
    truth = torch.roll(state, 1, -1)
    noise = (0.05 + 0.5 * torch.rand(n, k, 1, 1, generator=g)) * torch.randn(n, k, 2, 16, generator=g)
    cands = truth.unsqueeze(1) + noise
    mse = ((cands - truth.unsqueeze(1)) ** 2).flatten(2).mean(2)
    return {"state": state, "truth": truth, "cands": cands, "mse": mse,
            "anchor": truth + 0.1 * torch.randn(n, 2, 16, generator=g)}


def prm_losses():
    """Reference head with the operator anchor: triplet margin + reference regression."""
    cfg = PRMConfig(width=8, layers=2, epochs=3, batch_size=16, set_size=4, seed=0)
    torch.manual_seed(0)
    model = PRM(cfg, n_fields=2, ndim=1)
    logged = []
    train_prm(model, prm_data(40, 6, 0), prm_data(12, 6, 1), cfg, log=lambda m, s: logged.append(m), progress=False)
    return [m[k] for m in logged for k in ("train/loss", "val/objective") if k in m]


def trc_losses(process_weight):
    problem = make_problem(DoubleIntegratorConfig(n_train=24, n_val=8, n_test=8))
    data = with_teacher_cost(problem, problem.make_dataset()[0])
    torch.manual_seed(0)
    model = make_model(TRCModelConfig(latent=16, layers=1, H_cycles=2, L_cycles=1), **problem.dims)
    logged = []
    fit(model, problem, data, TRCConfig(epochs=2, batch_size=8, process_weight=process_weight, log_every=1),
        seed=0, log=lambda m, s: logged.append(m), progress=False)
    return [m.get("train/loss", m.get("val/loss")) for m in logged]


@pytest.mark.parametrize("kind", sorted(PINNED))
def test_losses_match_the_values_pinned_before_the_shared_loop(kind):
    losses = {"operator": operator_losses, "prm": prm_losses, "trc_bc": lambda: trc_losses(0.0),
              "trc_ps": lambda: trc_losses(0.5)}[kind]()
    assert losses == pytest.approx(PINNED[kind], rel=1e-6)


def test_train_loss_selects_a_registered_operator_loss(monkeypatch):
    """Adding an operator loss is one registered function; train.loss picks it, unknown names are a
    ConfigError listing the registered ones."""
    doubled = lambda model, batch, cfg, problem=None: 2 * unrolled_mse(model, batch)  # noqa: E731
    monkeypatch.setitem(OPERATOR_LOSSES._items, "doubled_mse", doubled)
    cfg = build(TrainConfig, {"loss": "doubled_mse"}, "p.yaml", "train")
    assert operator_losses(loss=cfg.loss)[0] == pytest.approx(2 * PINNED["operator"][0], rel=1e-6)
    with pytest.raises(ConfigError, match="p.yaml: train: loss must be one of .*unrolled_mse"):
        build(TrainConfig, {"loss": "mse2"}, "p.yaml", "train")


def test_a_loss_that_is_never_finite_is_a_one_line_error():
    """NaN in every validation epoch leaves no best weights: a TrainingError, not a TypeError later."""
    x, y = torch.full((8, 1, 4), float("nan")), torch.zeros(8, 1, 1, 4)
    model = torch.nn.Conv1d(1, 1, 1)
    with pytest.raises(TrainingError, match="val/loss was not finite in any epoch; lower the learning rate"):
        train(model, (x, y), (x, y), TrainConfig(epochs=2, batch_size=4), progress=False)
