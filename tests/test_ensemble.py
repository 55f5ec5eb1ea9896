"""Deep-ensemble candidates: members' predictions as candidates, controls and compute counts."""

import os

import pytest
import torch

from ttclab.data.datasets import Normalizer
from ttclab.problems import make_problem
from ttclab.rewards import make_reward
from ttclab.sampling import SamplingConfig
from ttclab.sampling.ensemble import Ensemble, EnsembleError
from ttclab.ttc.search import search


@pytest.fixture(scope="module")
def setup():
    from conftest import build_tiny_project

    from ttclab.models import make_model

    cfg = build_tiny_project("euler1d")
    problem = make_problem(cfg.problem)
    members = []
    for seed in range(3):
        torch.manual_seed(seed)
        members.append(make_model(cfg.model, n_fields=3, ndim=1).eval())
    g = torch.Generator().manual_seed(0)
    truth = 1.0 + 0.1 * torch.rand(2, 4, 3, 32, generator=g)  # positive density and pressure
    return problem, members, truth, Normalizer(torch.ones(3), torch.full((3,), 0.5))


def run(model, setup, reward, n, sampler="ensemble"):
    problem, _, truth, norm = setup
    return search(model, norm, problem, truth, make_reward(reward, problem=problem, generator=torch.Generator()),
                  branching=n, sampling_cfg=SamplingConfig(sampler=sampler, members=len(getattr(model, "members", [0]))),
                  generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def test_one_member_ensemble_rolls_out_exactly_like_the_plain_operator(setup):
    member = setup[1][0]
    for reward in ("baseline", "random"):
        a = run(Ensemble([member]), setup, reward, 2, "ensemble+latent_noise").trajectory
        b = run(member, setup, reward, 2, "latent_noise").trajectory
        assert torch.equal(a, b), reward


@torch.no_grad()
def test_ensemble_mean_control_at_step_1_is_the_mean_of_the_members_predictions(setup):
    problem, members, truth, norm = setup
    out = run(Ensemble(members), setup, "ensemble", 3).trajectory
    x = norm.encode(truth[:, 0], 1)
    expected = norm.decode(torch.stack([m(x) for m in members]).mean(0), 1)
    assert torch.allclose(out[:, 1], expected, atol=1e-5)
    assert torch.equal(run(Ensemble(members), setup, "baseline", 1).trajectory, run(members[0], setup, "baseline", 1,
                                                                                   "latent_noise").trajectory)


@torch.no_grad()
def test_compute_counts_members_candidates(setup):
    """3 members x 2 noisy candidates each, 2 ICs, 3 steps: 2 * 3 * 6 = 36 operator samples."""
    res = run(Ensemble(setup[1]), setup, "random", 6, "ensemble+latent_noise")
    assert res.model_evals == 2 * 3 * 6
    with pytest.raises(EnsembleError, match="ttc.branching=4 is not a multiple of sampling.members=3"):
        run(Ensemble(setup[1]), setup, "random", 4)


@pytest.mark.slow
def test_ttc_stage_trains_the_members_and_logs_their_controls(tmp_path, monkeypatch, tracking_store_in, tiny_project):
    from ttclab.stages import Context
    from ttclab.tracking.store import Tracker

    tracker = Tracker(tracking_store_in(monkeypatch, tmp_path))
    cfg = tiny_project("euler1d", "train.epochs=1", "sampling.sampler=ensemble", "sampling.members=2",
                       "ttc.branching=2", "ttc.reward=random", "ttc.n_ics=3")
    _, m = Context(tracker, progress=False).run("ttc", cfg)
    exp = tracker.client.get_experiment_by_name("ttclab/euler1d")
    trains = [r for r in tracker.client.search_runs([exp.experiment_id]) if r.data.tags["ttclab.stage"] == "train"]
    assert sorted(r.data.params["seed"] for r in trains) == ["0", "1"]  # member i trained with seed + i
    if len(os.sched_getaffinity(0)) > 1:  # stages/members.py: one process per missing member
        pids = {r.data.tags["ttclab.pid"] for r in trains}
        assert len(pids) == 2 and str(os.getpid()) not in pids
    final = cfg.problem.n_snapshots - 1
    assert m[f"control/member1/rollout_mse/h{final}"] != m[f"control/baseline/rollout_mse/h{final}"]
    assert m[f"control/member0/rollout_mse/h{final}"] == m[f"control/baseline/rollout_mse/h{final}"]  # unprojected
    assert {"gain_vs/member0/ci_lo", "gain_vs/member1/within_noise"} <= set(m)  # compare's vs best member column
    assert m["cost/forward_per_step"] == 2


@pytest.mark.slow
def test_prm_triplets_come_from_the_members_and_the_prm_ranks_them_in_ttc(tmp_path, monkeypatch, tracking_store_in,
                                                                         tiny_project):
    """build_prm with sampler `ensemble`: member i's k / M candidates are its deterministic prediction
    (no noise), member 0's equal the stored anchor `det`; the trained PRM then selects in ttc."""
    import numpy as np

    from ttclab.data.pdebench import read_triplets
    from ttclab.stages import Context
    from ttclab.tracking.store import Tracker

    tracker = Tracker(tracking_store_in(monkeypatch, tmp_path))
    sets = ("train.epochs=1", "sampling.sampler=ensemble", "sampling.members=2", "triplets.k=4",
            "triplets.fraction=0.5", "prm.width=8", "prm.layers=2", "prm.epochs=1", "prm.set_size=3",
            "ttc.branching=2", "ttc.reward=prm", "ttc.n_ics=3")
    ctx = Context(tracker, progress=False)
    _, m = ctx.run("ttc", tiny_project("euler1d", *sets))
    exp = tracker.client.get_experiment_by_name("ttclab/euler1d")
    runs = tracker.client.search_runs([exp.experiment_id])
    build = next(r for r in runs if r.data.tags["ttclab.stage"] == "build_prm")
    t = read_triplets(tracker.artifact_dir(build.info.run_id) / "prm" / "triplets.h5", keys=("candidates", "det"))
    c = t["candidates"]
    assert np.allclose(c[:, 0], t["det"], atol=1e-5) and np.array_equal(c[:, 0], c[:, 1])
    assert np.array_equal(c[:, 2], c[:, 3]) and not np.allclose(c[:, 2], c[:, 0])  # member 1's own prediction
    assert m["cost/forward_per_step"] == 2 + 1 and np.isfinite(m["reward/spearman"])  # + the PRM anchor pass
    with pytest.raises(EnsembleError, match="triplets.k=5 is not a multiple of sampling.members=2"):
        ctx.run("build_prm", tiny_project("euler1d", *sets, "triplets.k=5"))


def test_given_members_are_taken_in_order_and_one_uri_for_an_ensemble_is_refused(tmp_path, monkeypatch,
                                                                                 tracking_store_in, tiny_project):
    """--input operator=URI0,URI1: member i is URI i (fine-tuned members cannot be got or run: their
    init is not in the train key); one URI for two members would make two identical members."""
    from ttclab.stages import Context
    from ttclab.tracking.store import Tracker

    tracker = Tracker(tracking_store_in(monkeypatch, tmp_path))
    sets = ("train.epochs=1", "sampling.sampler=ensemble", "sampling.members=2", "ttc.branching=2",
            "ttc.reward=random", "ttc.n_ics=2")
    with pytest.raises(EnsembleError, match="1 URI\\(s\\) given, sampler ensemble with sampling.members=2 needs 2"):
        Context(tracker, progress=False, inputs={"operator": "runs:/0/model/operator.pt"}).run("ttc", tiny_project("euler1d", *sets))
    ctx = Context(tracker, progress=False)
    a, b = (f"runs:/{ctx.run('train', tiny_project('euler1d', 'train.epochs=1', f'seed={s}'))[0]}/model/operator.pt"
            for s in (0, 1))
    final = tiny_project("euler1d").problem.n_snapshots - 1
    mse = [Context(tracker, progress=False, inputs={"operator": uris}).run("ttc", tiny_project("euler1d", *sets))[1]
           for uris in (f"{a},{b}", f"{b}, {a}")]
    key = [f"control/member{i}/rollout_mse/h{final}" for i in (0, 1)]
    assert mse[0][key[0]] == mse[1][key[1]] and mse[0][key[1]] == mse[1][key[0]] != mse[0][key[0]]
    assert mse[0][f"control/baseline/rollout_mse/h{final}"] == mse[0][key[0]]  # the baseline is member 0
    trains = [r for r in tracker.client.search_runs([tracker.client.get_experiment_by_name("ttclab/euler1d").experiment_id])
              if r.data.tags["ttclab.stage"] == "train"]
    assert len(trains) == 2  # nothing got or run beyond the two given
