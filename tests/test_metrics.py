"""Rollout metrics and TTC statistics against hand-computed values."""

import math

import torch

from ttclab.metrics.rollout import (correlation_time, crmse_per_step, frmse_per_step, maxerr_per_step, mse_per_step,
                                    rmse_per_field)
from ttclab.metrics.ttc import bootstrap_ci, gain_with_ci


class MassOnly:
    """A 1D problem whose only conserved density is field 0, on cells of width 0.5."""

    def conserved(self, u):
        return {"mass": u[..., 0, :].sum(-1) * 0.5}

    def conserved_scale(self, u):
        return {"mass": u[..., 0, :].abs().sum(-1) * 0.5}


def test_crmse_is_the_relative_error_of_the_total():
    true = torch.ones(1, 2, 2, 4)  # mass 2 at t = 0, int|q| = 2
    pred = true.clone()
    pred[0, 1, 0, 0] += 1.0  # total 2.5: error 0.5 / 2 = 0.25; field 1 is not conserved and is ignored
    pred[0, 1, 1] += 7.0
    assert torch.allclose(crmse_per_step(MassOnly(), pred, true), torch.tensor([[0.0, 0.25]]))


def test_frmse_of_a_single_mode_lands_in_its_band_only():
    x = torch.arange(64) / 64
    true = torch.zeros(3, 1, 2, 64)
    pred = true.clone()
    for b, k in enumerate((2, 7, 20)):  # one per band: low k<4, mid 4<=k<12, high k>=12
        pred[b, 0, 1] = 0.3 * torch.cos(2 * math.pi * k * x)
    bands = frmse_per_step(pred, true, ndim=1)
    expected = 0.3 / math.sqrt(2) / math.sqrt(2)  # RMSE of the mode, the mean over 2 fields taken on squares
    for b, name in enumerate(("low", "mid", "high")):
        for other in bands:
            assert math.isclose(float(bands[other][b, 0]), expected if other == name else 0.0, abs_tol=1e-6)
    total = sum(v**2 for v in bands.values())
    assert torch.allclose(total, mse_per_step(pred, true), atol=1e-7)  # Parseval: bands add up to the MSE


def test_frmse_2d_uses_the_radial_wavenumber():
    x = torch.arange(32) / 32
    e = torch.cos(2 * math.pi * (3 * x[:, None] + 3 * x[None, :]))  # |k| = sqrt(18) = 4.2: mid, though kx, ky < 4
    pred = e.reshape(1, 1, 1, 32, 32)
    bands = frmse_per_step(pred, torch.zeros_like(pred), ndim=2)
    assert math.isclose(float(bands["mid"]), 1 / math.sqrt(2), rel_tol=1e-5)
    assert float(bands["low"]) < 1e-6 and float(bands["high"]) < 1e-6


def test_max_error_and_rmse_per_field():
    true = torch.zeros(1, 1, 2, 4)
    pred = torch.tensor([[[[1.0, -3.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0]]]])
    assert float(maxerr_per_step(pred, true)) == 3.0
    assert torch.allclose(rmse_per_field(pred, true), torch.tensor([[[math.sqrt(10 / 4), 2.0]]]))


def test_correlation_time_of_a_decaying_signal():
    """pred = truth + growing noise-free distortion: corr(t) = 1 / sqrt(1 + a_t^2) for an orthogonal
    mode of relative size a_t, so with a_t = 0.25 t it first drops below 0.8 (a > 0.75) at t = 4."""
    x = torch.arange(64) / 64
    s, o = torch.sin(2 * math.pi * x), torch.sin(2 * math.pi * 5 * x)
    steps = 6
    true = s.expand(2, steps + 1, 1, 64).clone()
    pred = torch.stack([s + 0.25 * t * o for t in range(steps + 1)])[None, :, None].repeat(2, 1, 1, 1)
    pred[1] = true[1]  # never decorrelates: past the horizon
    assert correlation_time(pred, true).tolist() == [4, steps + 1]
    assert correlation_time(pred, true, threshold=0.95).tolist() == [2, steps + 1]  # a > 0.33 at t = 2


def test_bootstrap_interval_covers_the_known_mean_at_about_the_stated_rate():
    """200 synthetic samples of 40 ICs with mean 1: the 95% interval should cover 1 in ~95% of them
    (percentile bootstrap undercovers a little at n = 40; 0.88-0.99 allows the binomial noise)."""
    gen = torch.Generator().manual_seed(1)
    covered = 0
    for trial in range(200):
        values = 1.0 + torch.randn(40, generator=gen) * 2.0
        lo, hi = bootstrap_ci(values, resamples=500, seed=trial)
        covered += lo <= 1.0 <= hi
    assert 0.88 <= covered / 200 <= 0.99


def test_gain_with_ci_flags_noise_and_real_gains():
    gen = torch.Generator().manual_seed(0)
    ref = torch.ones(30)
    better = gain_with_ci(ref, ref * 0.5 + 0.01 * torch.rand(30, generator=gen), "g")
    assert 48 < better["g/ci_lo"] <= better["g/mean"] <= better["g/ci_hi"] < 50 and better["g/within_noise"] == 0.0
    noise = gain_with_ci(ref, 1 + 0.1 * torch.randn(30, generator=gen), "g")
    assert noise["g/within_noise"] == 1.0
    assert gain_with_ci(ref, ref * 0.9, "g", seed=3) == gain_with_ci(ref, ref * 0.9, "g", seed=3)  # seeded


def test_compare_aggregates_candidate_seeds_with_standard_errors():
    from ttclab.stages.compare import aggregate, table, within_noise

    seeds = [{"rollout_nrmse/h2": 0.1, "rollout_mse/h2": 1.0, "sample_gain/mean": 4.0},
             {"rollout_nrmse/h2": 0.3, "rollout_mse/h2": 3.0, "sample_gain/mean": 6.0}]
    m = aggregate(seeds)
    assert m["seeds/n"] == 2 and m["rollout_mse/h2"] == 2.0 and math.isclose(m["rollout_mse/h2/se"], 1.0)
    assert not within_noise(m)  # 5 +- 1.96 * 1 excludes 0
    assert within_noise(aggregate([{"sample_gain/mean": -1.0}, {"sample_gain/mean": 3.0}]))  # 1 +- 3.9
    header, body = table([("arm", "id", m, ["id"])])
    assert body[0][header.index("MSE h2")] == "2.000e+00 ± 1.000e+00" and body[0][header.index("within noise")] == "no"


def test_ttc_seeds_runs_once_per_candidate_seed_and_compare_aggregates_them(tmp_path, monkeypatch, tracking_store_in):
    from click.testing import CliRunner
    from conftest import DEFAULT_PROJECT, TINY_GRIDS, TINY_OVERRIDES

    from ttclab.cli import main

    tracking_store_in(monkeypatch, tmp_path)
    sets = [f"{k}={v}" for k, v in TINY_OVERRIDES.items()] + [f"problem.{k}={v}" for k, v in TINY_GRIDS["euler1d"].items()]
    sets += ["train.epochs=1", "ttc.reward=random", "ttc.branching=3", "ttc.n_ics=3"]
    args = ["ttc", str(DEFAULT_PROJECT), "--quiet", "--seeds", "0,1"] + [a for s in sets for a in ("--set", s)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.output.count("ttc run ") == 2 and "compare run " in result.output
    row = next(line for line in result.output.splitlines() if line.startswith("| random |"))
    assert row.split("|")[2].strip() == "2"  # the seeds column: both candidate seeds in one row
