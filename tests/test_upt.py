"""UPT (models/upt.py): the decoder answers any query points, the encoder takes any grid size, and the
operator trains and runs TTC through the stages as a `model.type: upt`."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ttclab.models.fno import FNO, FNOConfig
from ttclab.models.upt import UPT, UPTConfig, cell_centres, fourier_features
from ttclab.training.loop import TrainConfig, train
from ttclab.training.losses import LossError, inverse_weight, upt_inverse
from ttclab.stages import Context
from ttclab.tracking.store import Tracker


def model(ndim: int = 1) -> UPT:
    torch.manual_seed(0)
    return UPT(UPTConfig(), n_fields=3, ndim=ndim).eval()


def test_fourier_features_are_periodic_on_the_unit_box():
    x = torch.tensor([[0.1], [1.1]])
    feat = fourier_features(x, 4)
    assert feat.shape == (2, 8)
    torch.testing.assert_close(feat[0], feat[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(cell_centres((4,))[:, 0], torch.tensor([0.125, 0.375, 0.625, 0.875]))


def test_decoder_is_grid_size_agnostic():
    """Tokens from a 24-cell state decode on 24, 48 or 7 cells, decode_at the 24 cell centres is exactly
    the dense decode, and the encoder takes a grid that is not a multiple of the patch."""
    m = model()
    u = torch.randn(2, 3, 24, generator=torch.Generator().manual_seed(1))
    z = m.step(m.encode(u))
    coarse = m.decode(z, u)
    for n in (48, 7):
        assert m.decode(z, torch.zeros(2, 3, n)).shape == (2, 3, n)
    at = m.decode_at(z, cell_centres((24,)))
    torch.testing.assert_close(at.transpose(1, 2), coarse, rtol=0, atol=0)
    assert m.encode(torch.randn(2, 3, 30)).shape == (2, m.cfg.tokens, m.cfg.dim)  # 30 not a multiple of patch


def test_upt_trains_and_runs_ttc_end_to_end(isolated_tracking, tiny_project):
    cfg = tiny_project("euler1d")
    cfg = dataclasses.replace(cfg, model=UPTConfig(dim=16, tokens=4, heads=2, approx_layers=1, dropout=0.1),
                              sampling=dataclasses.replace(cfg.sampling, sampler="latent_noise+mc_dropout"))
    ctx = Context(Tracker(isolated_tracking), progress=False)
    _, out = ctx.run("ttc", cfg)
    assert torch.isfinite(torch.tensor(out["rollout_mse/h1"])) and out["cost/model_evals"] > 0


def test_inverse_curriculum_is_zero_then_a_linear_ramp_to_lambda_capped():
    assert [inverse_weight(0.6, e, 3, 1.0) for e in (0, 2)] == [0.0, 0.0]
    assert [round(inverse_weight(0.6, e, 3, 1.0), 6) for e in (3, 4, 5, 9)] == [0.2, 0.4, 0.6, 0.6]
    assert inverse_weight(0.6, 4, 3, 0.3) == 0.3 and inverse_weight(0.6, 0, 0, 0.5) == 0.5


def groups(m: UPT) -> dict[str, list[torch.nn.Parameter]]:
    return {"encoder": list(m.embed.parameters()), "approximator": list(m.approx.parameters()),
            "decoder": list(m.head.parameters())}


def grad_norms(term: torch.Tensor, m: UPT) -> dict[str, float]:
    out = {}
    for name, params in groups(m).items():
        g = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        out[name] = sum(float(x.norm()) for x in g if x is not None)
    return out


def test_each_inverse_term_trains_what_it_should_and_the_target_gets_no_gradient():
    m = model().train()
    u0 = torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(2))
    batch = {"u0": u0, "targets": torch.randn(2, 1, 3, 16), "epoch": 5, "batch_index": 0}
    terms = upt_inverse(m, batch, TrainConfig(loss="upt_inverse"))
    reach = {k: grad_norms(terms[k], m) for k in ("L_forward", "L_inv_enc", "L_inv_dec")}
    assert all(v > 0 for v in reach["L_forward"].values())
    assert reach["L_inv_enc"]["encoder"] > 0 and reach["L_inv_enc"]["decoder"] > 0
    assert reach["L_inv_enc"]["approximator"] == 0  # D(E(u)) never passes the approximator
    assert all(v > 0 for v in reach["L_inv_dec"].values())
    # sg(z1): the approximator's gradient from L_inv_dec is only the path through D's input.
    z1 = m.step(m.encode(u0))
    zin = z1.detach().requires_grad_()
    g = torch.autograd.grad(torch.mean((m.encode(m.decode(zin, u0)) - z1.detach()) ** 2), zin)[0]
    want = torch.autograd.grad(z1, groups(m)["approximator"], g)
    got = torch.autograd.grad(terms["L_inv_dec"], groups(m)["approximator"])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    # Warm-up (weight 0) and validation (no epoch): the objective is the forward loss, inverse terms logged only.
    for b in ({**batch, "epoch": 0}, {"u0": u0, "targets": batch["targets"]}):
        t = upt_inverse(m, b, TrainConfig(loss="upt_inverse", inverse_warmup_epochs=2))
        assert float(t["inv_weight"]) == 0 and not t["L_inv_enc"].requires_grad
        torch.testing.assert_close(t["loss"], t["L_forward"])
    with pytest.raises(LossError, match="model.type=upt"):
        upt_inverse(FNO(FNOConfig(width=4, modes=2, layers=1), 3, 1), batch, TrainConfig())


def test_upt_inverse_logs_its_terms_per_step_following_the_curriculum():
    g = torch.Generator().manual_seed(3)
    pairs = torch.randn(8, 3, 16, generator=g), torch.randn(8, 1, 3, 16, generator=g)
    cfg = TrainConfig(epochs=4, batch_size=4, log_every=1, loss="upt_inverse", lambda_inv_enc=0.5,
                      lambda_inv_dec=0.25, inverse_warmup_epochs=2, inverse_frequency=2)
    logged = []
    m = UPT(UPTConfig(dim=8, tokens=2, heads=2, approx_layers=1), n_fields=3, ndim=1)
    train(m, pairs, pairs, cfg, progress=False, log=lambda metrics, step: logged.append(metrics))
    weights = [r["train/inv_weight"] for r in logged if "train/inv_weight" in r]
    assert weights == [0, 0, 0, 0, 0.25, 0, 0.5, 0]  # epochs 0..3 x batches 0, 1; ramp over epochs 2, 3
    assert all(r["train/L_inv_enc"] > 0 and r["train/L_inv_dec"] > 0 for r in logged if "train/L_inv_enc" in r)
