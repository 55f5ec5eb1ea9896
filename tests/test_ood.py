"""The out-of-distribution project's pieces: initial-condition families, checked from the file."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from conftest import build_tiny_project, write_tiny_data
from test_problems import ROUND_OFF, cell_volume, euler_densities


def relative_drift(density: np.ndarray, dv: float) -> float:
    """max |Q(t) - Q(0)| / max_t integral |q(t)|: a blast starts at rest (zero momentum), so the
    scale is the largest absolute content over the run rather than the initial one."""
    space = tuple(range(2, density.ndim))
    total = density.sum(axis=space) * dv
    scale = (np.abs(density).sum(axis=space) * dv).max(axis=1, keepdims=True)
    return float((np.abs(total - total[:, :1]) / scale).max())


@pytest.mark.parametrize("problem, ic, velocities, axes", [
    ("euler1d", "riemann", ["Vx"], ["x-coordinate"]),
    ("euler1d", "blast", ["Vx"], ["x-coordinate"]),
    ("euler2d", "riemann", ["Vx", "Vy"], ["x-coordinate", "y-coordinate"]),
    ("euler2d", "blast", ["Vx", "Vy"], ["x-coordinate", "y-coordinate"]),
])
def test_sharp_families_are_positive_conserved_and_sharp(tmp_path, problem, ic, velocities, axes):
    path = write_tiny_data(tmp_path / "d.h5", build_tiny_project(problem, f"problem.ic={ic}", "data.n_trajectories=6"))
    with h5py.File(path, "r") as f:
        rho0, p0 = f["density"][:, 0], f["pressure"][:, 0]
        assert (f["density"][()] > 0).all() and (f["pressure"][()] > 0).all()
        assert np.abs(f["density"][:, -1] - f["density"][:, 0]).max() > 1e-2  # it evolves
        densities = euler_densities(f, velocities)
        dv = cell_volume(f, axes)
    # Sharp: the initial state is piecewise constant, so most neighbour differences are exactly zero
    # while a few are O(amplitude) jumps (a smooth IC has no zero differences).
    jumps = np.abs(np.diff(p0 if ic == "blast" else rho0, axis=1))
    assert (jumps == 0).mean() > 0.5 and jumps.max() > 0.1
    if ic == "blast":
        assert np.allclose(p0.max(axis=tuple(range(1, p0.ndim))) / p0.min(axis=tuple(range(1, p0.ndim))), 10.0)
    for name, q in densities.items():
        assert relative_drift(q, dv) < ROUND_OFF, name


def test_unknown_family_is_a_config_error():
    from ttclab.errors import UserError

    with pytest.raises(UserError, match="problem.ic"):
        build_tiny_project("euler1d", "problem.ic=shock")


def test_fine_tune_from_init_starts_at_the_pretrained_loss(isolated_tracking, tiny_data_file):
    from ttclab.stages import Context
    from ttclab.tracking.store import Tracker

    tracker = Tracker(isolated_tracking)
    cfg = build_tiny_project("euler1d", f"data.path={tiny_data_file('euler1d')}", "train.epochs=2")
    pre_id, _ = Context(tracker, progress=False).run("train", cfg)
    uri = f"runs:/{pre_id}/model/operator.pt"
    fine_id, _ = Context(tracker, progress=False, inputs={"init": uri}).run("train", cfg)
    pre, fine = (tracker.run_info(i).data.metrics for i in (pre_id, fine_id))
    # Same data: the fine-tune's first evaluation is the checkpoint's best val loss (fresh optimizer,
    # same weights, same normalizer), and training on from there does not start over.
    assert fine["init/val_loss"] == pytest.approx(pre["val/best_loss"], rel=1e-5)
    assert fine["val/best_loss"] <= pre["val/best_loss"] * 1.05
    # A fresh initialisation starts elsewhere, so the equality above is the weights' doing.
    assert torch_init_loss(cfg) != pytest.approx(pre["val/best_loss"], rel=1e-3)


def torch_init_loss(cfg) -> float:
    """Val loss of a freshly initialised operator on the same data, as the train stage computes it."""
    import torch

    from ttclab.data.datasets import SplitData
    from ttclab.models import make_model
    from ttclab.problems import make_problem
    from ttclab.training.loop import evaluate

    problem = make_problem(cfg.problem)
    data = SplitData(cfg.data.path, problem, cfg.data)
    torch.manual_seed(cfg.seed)
    model = make_model(cfg.model, n_fields=problem.n_fields, ndim=problem.ndim)
    x, y = data.pairs("val", cfg.train.unroll)
    enc = data.normalizer.encode
    return evaluate(model, enc(x, 1), enc(y.flatten(0, 1), 1).view(y.shape), 64, "cpu", cfg.train)


def test_bradley_terry_loss_matches_a_hand_computed_value():
    import math

    import torch

    from ttclab.training.losses import PRM_LOSSES, bradley_terry_loss

    # Scores (1, 0, -1): pair gaps 1, 1, 2 -> (2 log(1 + e^-1) + log(1 + e^-2)) / 3.
    want = (2 * math.log1p(math.exp(-1)) + math.log1p(math.exp(-2))) / 3
    assert bradley_terry_loss(torch.tensor([[1.0, 0.0, -1.0]])).item() == pytest.approx(want, rel=1e-6)
    # A reversed order costs more, equal scores cost log 2 per pair.
    assert bradley_terry_loss(torch.tensor([[-1.0, 0.0, 1.0]])).item() > want
    assert bradley_terry_loss(torch.zeros(4, 3)).item() == pytest.approx(math.log(2))
    assert {"triplet", "bradley_terry"} <= set(PRM_LOSSES.names())


def test_horizon_labels_with_h0_are_next_state_labels_and_look_ahead_otherwise():
    import torch

    from ttclab.training.triplet import horizon_errors

    gen = torch.Generator().manual_seed(0)
    cands, future = torch.randn(6, 4, 3, 8, generator=gen), torch.randn(6, 3, 3, 8, generator=gen)
    next_mse = ((cands - future[:, :1]) ** 2).flatten(2).mean(2)
    ones = torch.ones(6, 1, dtype=torch.bool)
    for reduce in ("final", "mean"):
        assert torch.equal(horizon_errors(lambda u: 2 * u, cands, future[:, :1], ones, reduce), next_mse)
    # H = 2 with step u -> 2u: e_h = MSE(2^h cand, future_h); the last state has only h = 0, 1 valid.
    valid = torch.ones(6, 3, dtype=torch.bool)
    valid[-1, 2] = False
    e = torch.stack([((2 ** h * cands - future[:, h : h + 1]) ** 2).flatten(2).mean(2) for h in range(3)], -1)
    final = horizon_errors(lambda u: 2 * u, cands, future, valid, "final")
    assert torch.allclose(final[:-1], e[:-1, :, 2]) and torch.allclose(final[-1], e[-1, :, 1])
    mean = horizon_errors(lambda u: 2 * u, cands, future, valid, "mean")
    assert torch.allclose(mean[:-1], e[:-1].mean(-1)) and torch.allclose(mean[-1], e[-1, :, :2].mean(-1))


def test_build_prm_with_horizon_zero_labels_like_next(isolated_tracking, tiny_data_file):
    from ttclab.data.pdebench import read_triplets
    from ttclab.stages import Context
    from ttclab.tracking.store import Tracker

    tracker = Tracker(isolated_tracking)
    sets = (f"data.path={tiny_data_file('euler1d')}", "train.epochs=1", "triplets.k=4", "triplets.fraction=0.3")
    files = {}
    for label in ("triplets.label=next", "triplets.label=horizon"):
        run_id, out = Context(tracker, progress=False).run(
            "build_prm", build_tiny_project("euler1d", *sets, label, "triplets.horizon=0"))
        files[label] = read_triplets(out["path"], keys=("mse", "next_mse"))
        assert "triplets/label_s" in tracker.run_info(run_id).data.metrics
    nxt, hor = files.values()
    assert np.allclose(hor["mse"], nxt["mse"], rtol=1e-6) and np.array_equal(hor["next_mse"], nxt["mse"])


def test_mixed_states_are_the_truth_states_then_the_rollout_states(isolated_tracking, tiny_data_file):
    from ttclab.data.pdebench import read_triplets
    from ttclab.stages import Context
    from ttclab.tracking.store import Tracker

    tracker = Tracker(isolated_tracking)
    sets = (f"data.path={tiny_data_file('euler1d')}", "train.epochs=1", "triplets.k=4", "triplets.fraction=0.3")
    got = {}
    for kind in ("truth", "rollout", "mixed"):
        _, out = Context(tracker, progress=False).run("build_prm", build_tiny_project("euler1d", *sets, f"triplets.states={kind}"))
        got[kind] = read_triplets(out["path"], keys=("state", "truth", "from_rollout"))
    n = len(got["truth"]["state"])
    mixed = got["mixed"]
    assert len(mixed["state"]) == 2 * n and mixed["from_rollout"].sum() == n
    assert np.array_equal(mixed["state"][:n], got["truth"]["state"])
    assert np.array_equal(mixed["state"][n:], got["rollout"]["state"])
    assert np.array_equal(mixed["truth"][:n], mixed["truth"][n:])  # the same next snapshots label both


def test_ranking_by_step_separates_the_steps():
    import torch

    from ttclab.metrics.prm import ranking_by_step

    err = torch.tensor([[0.1, 0.2, 0.3], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3]])
    scores = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])  # step 1: inverted
    out = ranking_by_step(scores, {"next": err}, torch.tensor([0, 0, 1]))
    assert out["next/spearman"] == {0: pytest.approx(1.0), 1: pytest.approx(-1.0)}
    assert out["next/best_pick"] == {0: 1.0, 1: 0.0}


def test_ranking_curves_number_the_steps_from_one_and_skip_unranked_steps():
    import torch

    from ttclab.metrics.prm import ranking_curves

    good, err = torch.tensor([[2.0, 1.0]]), torch.tensor([[0.1, 0.2]])
    out = ranking_curves([good, -good, torch.zeros(1, 1)], {"next": [err, err, torch.zeros(1, 1)]})
    assert out["next/best_pick"] == {1: 1.0, 2: 0.0}
