"""PRM: the triplet loss and ranking metrics on hand-computed cases, learning a synthetic ranking,
the reward contract of a saved PRM, and the build_prm -> train_prm stages in a temporary store."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ttclab.data.datasets import Normalizer
from ttclab.data.pdebench import DataError, read_triplets, write_triplets
from ttclab.metrics.prm import calibration, spearman, triplet_accuracy
from ttclab.models.prm import PRM, PRMConfig
from ttclab.rewards import make_reward
from ttclab.rewards.prm import PRMCheckpointError, save_prm
from ttclab.stages import Context
from ttclab.stages.prm import held_out_report
from ttclab.tracking.store import Tracker
from ttclab.training.losses import triplet_margin_loss
from ttclab.training.triplet import draw_sets, rank_triplet, score_all, train


def test_triplet_loss_is_zero_when_margins_hold_and_positive_otherwise():
    ok = torch.tensor([[3.0, 2.0, 1.0], [0.0, -0.5, -1.0]])
    assert triplet_margin_loss(ok, margin=0.5) == 0
    # row 1: gaps (0, 1) -> relu(0.5 - 0) + relu(0.5 - 1) = 0.5; row 2: gaps (-1, -1) -> 1.5 + 1.5 = 3
    bad = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 2.0]])
    assert triplet_margin_loss(bad, margin=0.5).item() == pytest.approx((0.5 + 3.0) / 2)
    with pytest.raises(ValueError, match=r"\(M, 3\)"):
        triplet_margin_loss(torch.zeros(4, 2), 0.1)


def test_triplet_accuracy_and_ranked_triplets():
    assert triplet_accuracy(torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 0.0]])) == 0.5
    mse = torch.tensor([[0.3, 0.1, 0.5, 0.2], [1.0, 2.0, 3.0, 4.0]])
    assert rank_triplet(mse).tolist() == [[1, 3, 2], [0, 1, 3]]  # best, lower median, worst


def test_spearman_hand_computed_sign_convention_ties_and_constant_rows():
    scores = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    errors = torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    # higher score on lower error = +1; the inverse = -1; a constant scorer carries no information = 0
    assert spearman(scores, errors).tolist() == pytest.approx([1.0, -1.0, 0.0])
    # ties share their average rank: score ranks (.5, .5, 2, 3), -error ranks (0, 1, 2, 3)
    # centered (-1, -1, .5, 1.5) and (-1.5, -.5, .5, 1.5): rho = 4.5 / sqrt(4.5 * 5)
    tied = spearman(torch.tensor([[1.0, 1.0, 2.0, 3.0]]), torch.tensor([[4.0, 3.0, 2.0, 1.0]]))
    assert tied.item() == pytest.approx(4.5 / math.sqrt(22.5), abs=1e-6)


def test_calibration_ece_hand_computed():
    perfect = calibration(torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([[1.0, 2.0, 3.0]]), bins=3)
    assert perfect["ece"] == pytest.approx(0.0)
    assert perfect["rel_mse"].tolist() == pytest.approx([1.5, 1.0, 0.5])  # buckets by ascending score
    # score quantiles q = (1, .5, 0); errors (2, 1, 3) give goodness g = (.5, 1, 0); with 3 bins:
    # |0 - 0| + |1 - .5| + |.5 - 1|, each bucket holding 1/3 of the candidates -> ECE = 1/3
    one = calibration(torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([[2.0, 1.0, 3.0]]), bins=3)
    assert one["ece"] == pytest.approx(1 / 3)
    inverted = calibration(torch.tensor([[0.0, 1.0]] * 4), torch.tensor([[1.0, 2.0]] * 4), bins=2)
    assert inverted["ece"] == pytest.approx(1.0) and inverted["count"].tolist() == [4, 4]


def synthetic(n_states: int, k: int, seed: int) -> dict:
    """Smooth periodic states; candidate j = next state + noise of a random scale, so the best
    candidate is the least noisy one. The PRM has to learn that roughness of the increment is bad."""
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(0, 2 * math.pi, 33)[:-1]
    phase = 2 * math.pi * torch.rand(n_states, 3, 1, generator=g)
    state = torch.sin(x + phase) + 0.3 * torch.cos(2 * x - phase)
    truth = torch.roll(state, 1, dims=-1)
    scale = 0.02 + 0.5 * torch.rand(n_states, k, 1, 1, generator=g)
    cands = truth.unsqueeze(1) + scale * torch.randn(n_states, k, 3, 32, generator=g)
    mse = ((cands - truth.unsqueeze(1)) ** 2).flatten(2).mean(2)
    return {"state": state, "truth": truth, "cands": cands, "mse": mse, "det_mse": torch.zeros(n_states)}


SYNTH_CFG = dict(head="local", anchor="set_mean", features=("state", "increment"), width=16, layers=2,
                 epochs=12, batch_size=32, lr=5e-3, set_size=5, seed=0)


@pytest.fixture(scope="module")
def synthetic_prm():
    torch.manual_seed(0)
    cfg = PRMConfig(**SYNTH_CFG)
    model = PRM(cfg, n_fields=3, ndim=1)
    val = synthetic(64, 8, seed=1)
    untrained = held_out_report(model, val, 5, 0, "cpu")[0]
    state = train(model, synthetic(192, 8, seed=0), val, cfg, progress=False)
    return model, cfg, val, untrained, state


def test_prm_learns_a_synthetic_ranking(synthetic_prm):
    model, cfg, val, untrained, state = synthetic_prm
    report, calib = held_out_report(model, val, cfg.set_size, 0, "cpu")
    assert report["prm/triplet_acc"] > 0.9 and untrained["prm/triplet_acc"] < 0.5
    assert report["prm/spearman"] > 0.8 and report["prm/ece"] < 0.1
    assert state["best_val"] == pytest.approx(-report["prm/spearman"], abs=1e-6) and 1 <= state["best_epoch"] <= cfg.epochs


def test_prm_reward_obeys_the_contract_and_prefers_the_least_noisy(synthetic_prm, tmp_path):
    model, cfg, val, _, _ = synthetic_prm
    # Physical units = 2 * normalized + 1 per channel; the reward must undo it with the stored normalizer.
    norm = Normalizer(np.ones(3, np.float32), 2 * np.ones(3, np.float32))
    prm_cfg = {**SYNTH_CFG, "features": ["state", "increment"]}
    path = save_prm(tmp_path / "prm.pt", model, norm, {"type": "euler1d"}, prm_cfg, 3)
    score = make_reward("prm", prm_path=path, device="cpu")
    cands, prev = norm.decode(val["cands"][:16].flatten(0, 1), 1).view(16, 8, 3, 32), norm.decode(val["state"][:16], 1)
    scores = score(cands, prev)
    assert scores.shape == (16, 8) and torch.isfinite(scores).all()
    assert (scores.argmax(1) == val["mse"][:16].argmin(1)).float().mean() > 0.7
    assert spearman(scores, val["mse"][:16]).mean() > 0.8


def test_prm_reward_refuses_bad_files_naming_them(tmp_path):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(PRMCheckpointError, match="corrupt.pt"):
        make_reward("prm", prm_path=bad)
    other = tmp_path / "other.pt"
    torch.save({"format": "ttclab.operator/1"}, other)
    with pytest.raises(PRMCheckpointError, match=r"other\.pt.*not a ttclab\.prm/1"):
        make_reward("prm", prm_path=other)
    with pytest.raises(PRMCheckpointError, match="no such PRM checkpoint"):
        make_reward("prm", prm_path=tmp_path / "missing.pt")


def test_triplet_file_round_trip_and_missing_key(tmp_path):
    arrays = {"state": np.random.rand(4, 3, 8).astype(np.float32), "mse": np.random.rand(4, 5)}
    path = write_triplets(tmp_path / "t.h5", arrays, {"k": 5})
    back = read_triplets(path, keys=("state",))
    assert np.array_equal(back["state"], arrays["state"]) and back["attrs"]["k"] == 5
    with pytest.raises(DataError, match=r"t\.h5: missing dataset 'candidates'"):
        read_triplets(path, keys=("state", "candidates"))


def test_draw_sets_are_distinct_candidates_with_their_triplet():
    mse = torch.rand(50, 9)
    subset, trip = draw_sets(mse, 5, torch.Generator().manual_seed(0))
    assert subset.shape == (50, 5) and all(len(set(row.tolist())) == 5 for row in subset)
    sub = mse.gather(1, subset)
    assert torch.equal(sub.gather(1, trip[:, :1]).squeeze(1), sub.min(1).values)
    assert torch.equal(sub.gather(1, trip[:, 2:]).squeeze(1), sub.max(1).values)


def test_train_prm_stage_end_to_end(tmp_path, monkeypatch, tracking_store_in, tiny_project):
    tracker = Tracker(tracking_store_in(monkeypatch, tmp_path))
    cfg = tiny_project("euler1d", "data.n_trajectories=16", "train.epochs=1", "triplets.k=4",
                       "triplets.fraction=0.5", "prm.width=8", "prm.layers=2", "prm.epochs=2", "prm.set_size=3")
    run_id, out = Context(tracker, progress=False).run("train_prm", cfg)
    exp = tracker.client.get_experiment_by_name("ttclab/euler1d")
    runs = {r.data.tags["ttclab.stage"]: r for r in tracker.client.search_runs([exp.experiment_id])}
    assert sorted(runs) == ["build_prm", "generate", "train", "train_prm"]
    assert all(r.info.status == "FINISHED" for r in runs.values())
    metrics = runs["train_prm"].data.metrics
    for key in ("prm/triplet_acc", "prm/spearman", "prm/ece", "train/loss", "val/loss", "prm/n3/captured"):
        assert key in metrics and math.isfinite(metrics[key])
    assert metrics["prm/spearman_next"] == metrics["prm/spearman"]  # next-state labels: the same ranking target
    steps = sorted(m.step for m in tracker.client.get_metric_history(run_id, "val/loss"))
    assert len(steps) == 3 and steps[0] == 0  # the untrained anchor (epoch 0), then 2 epochs
    by_step = tracker.client.get_metric_history(run_id, "prm/by_step/next/spearman")  # one point per rollout step
    assert len(by_step) > 1 and all(-1 <= m.value <= 1 for m in by_step)
    assert {"triplets/spread", "triplets/oracle_gap", "triplets/n_states"} <= set(runs["build_prm"].data.metrics)
    build_dir, prm_dir = tracker.artifact_dir(runs["build_prm"].info.run_id), tracker.artifact_dir(run_id)
    triplets = read_triplets(build_dir / "prm" / "triplets.h5", keys=("state", "best", "median", "worst", "candidates"))
    assert triplets["candidates"].shape[1] == 4 and triplets["best"].shape == triplets["state"].shape
    assert (triplets["mse"].min(1) <= triplets["mse"].max(1)).all()
    assert "plotly" in (prm_dir / "figures" / "prm_reliability.html").read_text()[:20000].lower()
    # The checkpoint embeds the operator (anchor="operator"), so the reward needs nothing else.
    score = make_reward("prm", prm_path=out["checkpoint"], device="cpu")
    prev = torch.from_numpy(triplets["state"][:3])
    scores = score(torch.from_numpy(triplets["candidates"][:3]), prev)
    assert scores.shape == (3, 4) and torch.isfinite(scores).all() and score.operator_evals_per_state == 1


def offset_anchor(n_states: int, seed: int, offset: float = 1.0) -> dict:
    """Candidates c_j = y + d_j with equal noise scales, so the label |d_j|^2 barely varies, and an
    anchor a = y + offset: the untrained reference head ranks by |c_j - a|^2 = |d_j|^2 - 2 offset
    mean(d_j) + offset^2, i.e. mostly by the cross term (near chance); learning r -> y fixes it."""
    g = torch.Generator().manual_seed(seed)
    state = torch.randn(n_states, 2, 16, generator=g)
    truth = torch.roll(state, 1, -1)
    cands = truth.unsqueeze(1) + 0.1 * torch.randn(n_states, 8, 2, 16, generator=g)
    mse = ((cands - truth.unsqueeze(1)) ** 2).flatten(2).mean(2)
    return {"state": state, "truth": truth, "cands": cands, "mse": mse, "anchor": truth + offset}


@pytest.mark.parametrize("select", ["ranking", "loss"])
def test_ranking_selection_keeps_a_trained_epoch_where_the_reference_term_worsens(select):
    """Validation states whose regression target is the anchor itself: the reference term is 0 at
    epoch 0 and grows as r learns the truth, while the ranking improves. select=loss keeps the
    untrained anchor (the failure seen in every real run); select=ranking keeps a trained epoch."""
    cfg = PRMConfig(width=8, layers=2, epochs=4, batch_size=16, lr=5e-2, set_size=5, select=select)
    val = offset_anchor(24, seed=1)
    val["truth"] = val["anchor"]  # the reference term now rewards staying at the anchor
    logged = []
    torch.manual_seed(0)
    model = PRM(cfg, n_fields=2, ndim=1)
    state = train(model, offset_anchor(128, seed=0), val, cfg, log=lambda m, s: logged.append(m), progress=False)
    epochs = [m for m in logged if "val/spearman" in m]
    rho, objective = [m["val/spearman"] for m in epochs], [m["val/objective"] for m in epochs]
    assert len(epochs) == cfg.epochs + 1 and rho[-1] > rho[0] + 0.3 and min(objective) == objective[0]
    if select == "loss":
        assert state["best_epoch"] == 0 and state["best_val"] == objective[0]
    else:
        best = max(range(len(rho)), key=rho.__getitem__)
        assert state["best_epoch"] == best > 0 and state["best_val"] == -rho[best]
        assert spearman(score_all(model, val), val["mse"]).mean().item() == pytest.approx(rho[best], abs=1e-6)
