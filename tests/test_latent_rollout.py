"""ttc.rollout=latent (encode once, step the latent, decode for rewards) and train.query_sampling:
invariants against the physical rollout, refusals, and a tiny end-to-end run on UPT."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from ttclab.config import ConfigError
from ttclab.data.datasets import SplitData
from ttclab.models.fno import FNO, FNOConfig
from ttclab.models.operator import Operator, OperatorError, Perturbation
from ttclab.models.upt import UPT, UPTConfig
from ttclab.problems import make_problem
from ttclab.rewards import make_reward
from ttclab.rewards.arm import ARMConfig
from ttclab.sampling import SamplingConfig
from ttclab.sampling.ensemble import Ensemble
from ttclab.stages import Context
from ttclab.tracking.store import Tracker
from ttclab.training.loop import TrainConfig
from ttclab.training.losses import upt_inverse
from ttclab.training.queries import QueryError, QuerySamplingConfig, gather_cells, sample_queries
from ttclab.ttc.rollout import rollout
from ttclab.ttc.search import search

from test_beam import gen
from test_ttc import setup  # noqa: F401  (the fixture upt_setup builds on)


class Orthogonal(Operator):
    """E(u) = Q vec(u), A(z) = z + 0.1 tanh(W z), D(z) = Q^T z: encoder and decoder exact inverses, so
    latent and physical rollouts agree to round-off (the constructed case of issue 10)."""

    latent, absolute_decode = True, True

    def __init__(self, n_fields: int, cells: int):
        super().__init__(n_fields, 1)
        g = torch.Generator().manual_seed(0)
        self.q = nn.Parameter(torch.linalg.qr(torch.randn(n_fields * cells, n_fields * cells, generator=g))[0])
        self.w = nn.Parameter(torch.randn(n_fields * cells, n_fields * cells, generator=g) / (n_fields * cells))

    def encode(self, u):
        return u.flatten(1) @ self.q.T

    def step(self, z):
        return z + 0.1 * torch.tanh(z @ self.w.T)

    def decode(self, z, u):
        return (z @ self.q).view(u.shape)


@pytest.fixture(scope="module")
def upt_setup(setup):
    """test_ttc's tiny euler1d problem and data, with a small untrained UPT (dropout on for MC-dropout)."""
    _, problem, data, _ = setup
    torch.manual_seed(0)
    upt = UPT(UPTConfig(dim=16, tokens=4, heads=2, approx_layers=1, dropout=0.1), problem.n_fields, 1).eval()
    return problem, data, upt


def test_latent_rollout_equals_physical_when_decoder_inverts_encoder(upt_setup):
    problem, data, _ = upt_setup
    truth = data["test"]
    m = Orthogonal(problem.n_fields, truth.shape[-1]).eval()
    base = {mode: search(m, data.normalizer, problem, truth, make_reward("baseline"), rollout=mode).trajectory
            for mode in ("physical", "latent")}
    torch.testing.assert_close(base["latent"], base["physical"], rtol=1e-5, atol=1e-5)
    arm = make_reward("arm", problem=problem, arm=ARMConfig())
    noisy = SamplingConfig(latent_sigma=0.05)
    picked = {mode: search(m, data.normalizer, problem, truth, arm, branching=4, sampling_cfg=noisy,
                           generator=gen(), rollout=mode).trajectory for mode in ("physical", "latent")}
    torch.testing.assert_close(picked["latent"], picked["physical"], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(picked["latent"], base["latent"])  # the noise really moved the picks
    # the ensemble mean: the mean of the latents, decoded (D linear here: = the mean of the fields)
    mean = {mode: search(m, data.normalizer, problem, truth, make_reward("ensemble"), branching=4, sampling_cfg=noisy,
                         generator=gen(), rollout=mode).trajectory for mode in ("physical", "latent")}
    torch.testing.assert_close(mean["latent"], mean["physical"], rtol=1e-4, atol=1e-5)


def test_latent_candidates_are_the_physical_ones_at_the_first_step(upt_setup):
    _, _, upt = upt_setup
    u = torch.randn(3, 3, 32, generator=gen(4))
    # (MC-dropout differs by design: a latent rollout's encoder ran once, deterministically)
    for p in (Perturbation(latent_sigma=0.1), Perturbation()):
        phys = upt.sample_next(u, 4, p, gen(7))
        _, lat = upt.sample_latent(upt.encode(u), u, 4, p, gen(7))
        torch.testing.assert_close(lat, phys, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ndim", [1, 2])
def test_greedy_latent_with_one_quiet_candidate_equals_the_plain_latent_rollout(upt_setup, tiny_data_file, ndim):
    problem, data, upt = upt_setup
    if ndim == 2:
        from conftest import build_tiny_project

        cfg = build_tiny_project("euler2d")
        problem = make_problem(cfg.problem)
        data = SplitData(tiny_data_file("euler2d"), problem, cfg.data)
        torch.manual_seed(0)
        upt = UPT(UPTConfig(dim=16, tokens=4, heads=2, patch=2, approx_layers=1), problem.n_fields, 2).eval()
    truth, norm = data["test"], data.normalizer
    plain = norm.decode(rollout(upt, norm.encode(truth[:, 0], ndim), truth.shape[1] - 1, mode="latent"), ndim)
    base = search(upt, norm, problem, truth, make_reward("baseline"), rollout="latent").trajectory
    torch.testing.assert_close(base, plain, rtol=0, atol=0)
    quiet = SamplingConfig(latent_sigma=0.0)
    arm = make_reward("arm", problem=problem, arm=ARMConfig())
    greedy = search(upt, norm, problem, truth, arm, branching=1, sampling_cfg=quiet, generator=gen(), rollout="latent")
    torch.testing.assert_close(greedy.trajectory, plain, rtol=1e-6, atol=1e-6)
    noisy = SamplingConfig(latent_sigma=0.05)
    picked = search(upt, norm, problem, truth, arm, branching=3, sampling_cfg=noisy, generator=gen(), rollout="latent")
    assert torch.isfinite(picked.trajectory).all() and not torch.allclose(picked.trajectory, plain)


def test_projected_latent_rollout_keeps_the_ics_totals(upt_setup):
    problem, data, upt = upt_setup
    truth = data["test"]
    out = search(upt, data.normalizer, problem, truth, make_reward("arm", problem=problem, arm=ARMConfig()),
                 branching=3, sampling_cfg=SamplingConfig(latent_sigma=0.05), generator=gen(), project=True,
                 rollout="latent")
    start, end = problem.conserved(truth[:, 0]), problem.conserved(out.trajectory[:, -1])
    for q in start:
        scale = problem.conserved(truth[:, 0].abs())[q].abs() + 1e-12
        assert float(((end[q] - start[q]).abs() / scale).max()) < 1e-4, q


def test_latent_rollout_refuses_what_it_cannot_do(upt_setup):
    problem, data, upt = upt_setup
    truth = data["test"]
    fno = FNO(FNOConfig(width=4, modes=2, layers=1), problem.n_fields, 1)
    with pytest.raises(OperatorError, match="ttc.rollout=physical"):
        search(fno, data.normalizer, problem, truth, make_reward("baseline"), rollout="latent")
    with pytest.raises(OperatorError, match="separate latent"):
        search(Ensemble([upt, upt]), data.normalizer, problem, truth, make_reward("baseline"), rollout="latent")
    with pytest.raises(OperatorError, match="input_perturb"):
        search(upt, data.normalizer, problem, truth, make_reward("arm", problem=problem, arm=ARMConfig()),
               branching=2, sampling_cfg=SamplingConfig(sampler="input_perturb"), generator=gen(), rollout="latent")


def test_query_samples_are_distinct_and_stratified_ones_cover_every_stratum():
    g = gen(5)
    uni = sample_queries(QuerySamplingConfig(True, 10, "uniform"), 4, 40, generator=g)
    assert uni.shape == (4, 10) and all(len(set(row.tolist())) == 10 for row in uni)
    strat = sample_queries(QuerySamplingConfig(True, 10, "stratified"), 4, 40, generator=g)
    assert torch.equal(strat // 4, torch.arange(10).expand(4, -1))  # one cell in each run of 4
    full = sample_queries(QuerySamplingConfig(True, 7, "stratified"), 2, 7, generator=g)
    assert torch.equal(full, torch.arange(7).expand(2, -1))
    u = torch.arange(2 * 3 * 6.).view(2, 3, 6)
    assert torch.equal(gather_cells(u, torch.tensor([[5, 0], [1, 1]])),
                       torch.tensor([[[5., 11, 17], [0, 6, 12]], [[19, 25, 31], [19, 25, 31]]]))
    with pytest.raises(QueryError, match="at most 40"):
        sample_queries(QuerySamplingConfig(True, 41), 1, 40)


def test_query_sampled_loss_over_every_cell_is_the_dense_loss(upt_setup):
    """Q = G uniform queries are a permutation of the cells: the same mean squared error, in 1D and 2D."""
    for ndim, shape in ((1, (16,)), (2, (4, 4))):
        torch.manual_seed(0)
        m = UPT(UPTConfig(dim=8, tokens=2, heads=2, patch=2, approx_layers=1), 3, ndim).eval()
        u0 = torch.randn(2, 3, *shape, generator=gen(6))
        batch = {"u0": u0, "targets": torch.randn(2, 1, 3, *shape, generator=gen(7)), "epoch": 3, "batch_index": 0}
        dense = upt_inverse(m, batch, TrainConfig(loss="upt_inverse"))
        qs = QuerySamplingConfig(True, 16)
        sampled = upt_inverse(m, batch, TrainConfig(loss="upt_inverse", query_sampling=qs))
        for k in ("L_forward", "L_inv_enc", "L_inv_dec", "loss"):
            torch.testing.assert_close(sampled[k], dense[k], rtol=1e-5, atol=1e-6)
        half = upt_inverse(m, batch, TrainConfig(loss="upt_inverse", query_sampling=QuerySamplingConfig(True, 8)))
        assert float(half["L_forward"].detach()) != pytest.approx(float(dense["L_forward"].detach()), rel=1e-6)


def test_query_sampling_needs_the_upt_loss():
    from ttclab.config import build

    with pytest.raises(ConfigError, match="loss=upt_inverse"):
        build(TrainConfig, {"query_sampling": {"enabled": True}}, "p.yaml", prefix="train")


def test_upt_trains_with_queries_and_runs_latent_ttc_end_to_end(isolated_tracking, tiny_project):
    cfg = tiny_project("euler1d", "train.loss=upt_inverse", "train.query_sampling.enabled=true",
                       "train.query_sampling.num_queries=8", "train.query_sampling.strategy=stratified",
                       "ttc.rollout=latent", "ttc.corr_threshold=-0.99")
    cfg = dataclasses.replace(cfg, model=UPTConfig(dim=16, tokens=4, heads=2, approx_layers=1))
    ctx = Context(Tracker(isolated_tracking), progress=False)
    _, trained = ctx.run("train", cfg)
    assert trained["val/latent/rollout_nrmse/h8"] > 0 and trained["val/rollout_nrmse/h8"] > 0
    run_id, out = ctx.run("ttc", cfg)
    assert torch.isfinite(torch.tensor(out["rollout_mse/h1"])) and out["control/oracle/sample_gain/mean"] >= -1e-6
    assert out["ttc/corr_time/mean"] == 9  # correlation never drops below -0.99: steps + 1
    assert (Tracker(isolated_tracking).artifact_dir(run_id) / "figures" / "ranking_by_step.html").stat().st_size > 0
