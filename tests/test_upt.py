"""UPT (models/upt.py): the decoder answers any query points, the encoder takes any grid size, and the
operator trains and runs TTC through the stages as a `model.type: upt`."""

from __future__ import annotations

import dataclasses

import torch

from ttclab.models.upt import UPT, UPTConfig, cell_centres, fourier_features
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
