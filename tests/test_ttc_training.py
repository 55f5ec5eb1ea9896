"""TTC during training (issue 11): closed-form weights, the plain limits of each option, the filter
stage's file and a best-of-N fine-tune with the oracle."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import build_tiny_project
from ttclab.training.loop import TrainConfig, train
from ttclab.training.ttc_training import (FilterConfig, TrainingTTC, hard_probabilities, keep_mask, reward_weights)


def test_reward_weights_are_clipped_then_renormalized_in_closed_form():
    r = torch.tensor([0.0, -1e-3, -1e-2, 5e-4, 1e-2])
    w, clipped = reward_weights(r, temperature=1e-3, w_min=0.5, w_max=3.0)
    c = torch.tensor([1.0, math.e, 3.0, math.exp(-0.5), 0.5])  # exp(-r/T) = 1, e, e^10 -> 3, e^-0.5, e^-10 -> 0.5
    assert torch.allclose(w, c / c.mean(), rtol=1e-6)
    assert float(w.mean()) == pytest.approx(1.0, rel=1e-6)
    assert clipped.tolist() == [False, False, True, False, True]
    w_inf, clipped_inf = reward_weights(r, math.inf, 0.5, 3.0)
    assert torch.equal(w_inf, torch.ones(5)) and not clipped_inf.any()


def pairs(n=24, seed=0):
    """Smooth random states (modes 1..3) and their shift by one cell: (n, 3, 32), (n, 1, 3, 32)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.arange(32) * 2 * math.pi / 32
    coef = torch.randn(n, 3, 3, 2, generator=g)
    u = sum(coef[..., k - 1, 0, None] * torch.sin(k * x) + coef[..., k - 1, 1, None] * torch.cos(k * x) for k in (1, 2, 3))
    return u, u.roll(1, -1).unsqueeze(1)


def tiny_model(seed=0):
    from ttclab.models import make_model

    torch.manual_seed(seed)
    return make_model(build_tiny_project("euler1d").model, n_fields=3, ndim=1)


def fake_scorer(cands, prev, truth=None):
    """Any reward: minus the candidates' mean square (B, N)."""
    return -cands.pow(2).flatten(2).mean(2)


def trained(cfg, scorers=None, seed=0):
    model = tiny_model(seed)
    train(model, pairs(), pairs(8, 1), cfg, seed=seed, progress=False, scorers=scorers)
    return model.state_dict()


def test_infinite_temperature_equals_plain_training_bit_for_bit():
    base = dict(epochs=2, batch_size=8, log_every=1)
    plain = trained(TrainConfig(**base))
    inf = trained(TrainConfig(**base, loss_weighting="reward", weight_temperature=math.inf), {"arm": fake_scorer})
    assert all(torch.equal(plain[k], inf[k]) for k in plain)
    finite = trained(TrainConfig(**base, loss_weighting="reward", weight_temperature=3.0), {"arm": fake_scorer})
    assert not all(torch.equal(plain[k], finite[k]) for k in plain)  # the weights do act when T is finite


def test_hard_sampling_with_equal_hardness_is_uniform_in_distribution():
    m = 20
    assert torch.equal(hard_probabilities(torch.full((m,), 3.0), 0.5), torch.full((m,), 1.0 / m))
    p = hard_probabilities(torch.arange(m, dtype=torch.float32), 0.5)
    assert (p.diff() > 0).all()  # probability rises with hardness
    # No perturbation: the N candidates are equal, the spread is 0 for every state, so the draws
    # must be uniform: a chi-square test over 200 epochs of M draws (df 19, p = 0.001 at 43.8).
    cfg = TrainConfig(sampling="hard", candidate_sigma=0.0, n_candidates=2, batch_size=8)
    ttc = TrainingTTC(cfg, {}, seed=0, log=lambda metrics, step: None)
    model, (x, _) = tiny_model(), pairs(m)
    counts = torch.zeros(m)
    for epoch in range(200):
        counts += torch.bincount(ttc.order(model, x, epoch, "cpu", 0), minlength=m)
    expected = 200.0
    assert float(((counts - expected) ** 2 / expected).sum()) < 43.8
    assert torch.equal(ttc.probs, torch.full((m,), 1.0 / m))


def test_keep_mask_keeps_exactly_the_fraction_or_the_threshold_side():
    scores = torch.tensor([0.3, -1.0, 2.0, 0.3, 5.0, -2.0, 0.0])
    # the 3 best; of the tied 0.3s the first index wins
    assert keep_mask(scores, FilterConfig(keep_fraction=3 / 7)).tolist() == [True, False, True, False, True, False, False]
    worst = keep_mask(scores, FilterConfig(keep_fraction=2 / 7, keep="worst"))
    assert set(scores[worst].tolist()) == {-2.0, -1.0}
    assert keep_mask(scores, FilterConfig(threshold=0.3)).tolist() == [True, False, True, True, True, False, False]


def test_filter_stage_writes_a_file_train_reads_with_the_kept_train_ics(isolated_tracking, tiny_data_file):
    from ttclab.data.datasets import SplitData
    from ttclab.problems import make_problem
    from ttclab.stages import Context
    from ttclab.tracking.store import Tracker

    tracker, source = Tracker(isolated_tracking), str(tiny_data_file("euler1d"))
    cfg = build_tiny_project("euler1d", "train.epochs=1", "filter.keep_fraction=0.5")
    run_id, out = Context(tracker, progress=False, inputs={"data": source}).run("filter", cfg)
    problem = make_problem(cfg.problem)
    before, after = SplitData(source, problem, cfg.data), SplitData(out["path"], problem, cfg.data)
    n_train = len(before["train"])
    assert len(after["train"]) == round(0.5 * n_train)
    assert tracker.run_info(run_id).data.metrics["filter/n_kept"] == round(0.5 * n_train)
    for split in ("val", "test"):
        assert torch.equal(before[split], after[split])
    assert torch.equal(before.normalizer.mean, after.normalizer.mean)
    kept = {tuple(t.flatten()[:8].tolist()) for t in after["train"]}
    assert kept <= {tuple(t.flatten()[:8].tolist()) for t in before["train"]}
    train_id, _ = Context(tracker, progress=False, inputs={"data": f"runs:/{run_id}/data/euler1d.h5"}).run("train", cfg)
    assert "val/best_loss" in tracker.run_info(train_id).data.metrics


def test_best_of_n_with_the_oracle_lowers_the_one_step_error():
    from ttclab.training.loop import evaluate

    model, val = tiny_model(), pairs(8, 1)
    train(model, pairs(), val, TrainConfig(epochs=1, batch_size=8), progress=False)
    before = evaluate(model, *val, 8, "cpu")

    def oracle(cands, prev, truth):
        return -(cands - truth.unsqueeze(1)).pow(2).flatten(2).mean(2)

    cfg = TrainConfig(epochs=3, batch_size=8, log_every=1, target="best_of_n", target_reward="oracle", n_candidates=8,
                      candidate_sigma=0.2)
    logged = []
    train(model, pairs(), val, cfg, progress=False, scorers={"oracle": oracle},
          log=lambda metrics, step: logged.append(metrics))
    assert evaluate(model, *val, 8, "cpu") < before
    steps = [m for m in logged if "train/target_true_mse" in m]
    assert steps and all(m["train/target_true_mse"] <= m["train/pred_true_mse"] + 1e-9 for m in steps)


@pytest.mark.parametrize("sets, fragment", [(("train.target=best_of_n",), "--input init="),
                                            (("train.loss_weighting=reward", "train.weight_reward=prm"), "--input prm=")])
def test_train_stage_names_the_missing_input(isolated_tracking, tiny_data_file, sets, fragment):
    from ttclab.errors import UserError
    from ttclab.stages import Context
    from ttclab.tracking.store import Tracker

    cfg = build_tiny_project("euler1d", f"data.path={tiny_data_file('euler1d')}", *sets)
    with pytest.raises(UserError, match=fragment.replace("-", r"\-")):
        Context(Tracker(isolated_tracking), progress=False).run("train", cfg)


@pytest.mark.parametrize("problem_name", ["euler1d", "euler2d"])
@pytest.mark.parametrize("model_type", ["fno", "upt"])
def test_every_option_trains_every_operator_in_1d_and_2d(problem_name, model_type):
    from ttclab.data.datasets import Normalizer
    from ttclab.models import make_model
    from ttclab.models.upt import UPTConfig
    from ttclab.problems import make_problem
    from ttclab.training.ttc_training import make_scorer

    cfg = build_tiny_project(problem_name)
    problem = make_problem(cfg.problem)
    mcfg = cfg.model if model_type == "fno" else UPTConfig(dim=16, tokens=4, heads=2, approx_layers=1)
    model = make_model(mcfg, n_fields=problem.n_fields, ndim=problem.ndim)
    u = torch.from_numpy(problem.solve(2, 0, progress=False).fields)
    x, y = u[:, :-1].flatten(0, 1), u[:, 1:].flatten(0, 1).unsqueeze(1)
    norm = Normalizer([0.0] * problem.n_fields, [1.0] * problem.n_fields)
    scorers = {name: make_scorer(name, problem, norm) for name in ("arm", "oracle")}
    for keys in (dict(loss_weighting="reward"), dict(sampling="hard", hard_score="arm"),
                 dict(target="best_of_n", target_reward="arm")):
        logged = []
        train(model, (x, y), (x[:4], y[:4]), TrainConfig(epochs=1, batch_size=8, log_every=1, **keys), progress=False,
              scorers=scorers, log=lambda metrics, step: logged.append(metrics))
        assert all(math.isfinite(v) for m in logged for v in m.values() if isinstance(v, float)), keys


def test_filter_rounds_retrain_and_refilter_all_train_ics(isolated_tracking, tiny_data_file):
    from ttclab.data.datasets import SplitData
    from ttclab.problems import make_problem
    from ttclab.stages import Context
    from ttclab.tracking.store import Tracker

    tracker, source = Tracker(isolated_tracking), str(tiny_data_file("euler1d"))
    cfg = build_tiny_project("euler1d", "train.epochs=1", "filter.keep_fraction=0.5", "filter.rounds=2",
                             "filter.reward=oracle")
    run_id, out = Context(tracker, progress=False, inputs={"data": source}).run("filter", cfg)
    problem = make_problem(cfg.problem)
    first = SplitData(tracker.artifact_dir(run_id) / "data/round1/euler1d.h5", problem, cfg.data)
    last, n_train = SplitData(out["path"], problem, cfg.data), len(SplitData(source, problem, cfg.data)["train"])
    assert len(first["train"]) == len(last["train"]) == round(0.5 * n_train)  # round 2 refilters all train ICs
    history = tracker.client.get_metric_history(run_id, "filter/all_true_mse")
    assert sorted(m.step for m in history) == [1, 2]
    # round 2 scored the rollouts of a different operator (trained on round 1's file)
    assert history[0].value != history[1].value
