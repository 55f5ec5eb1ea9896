"""The FNO operator: shapes, grid-size agnosticism, and its single stochastic interface."""

from __future__ import annotations

import pytest
import torch

from ttclab.models import make_model
from ttclab.models.fno import FNOConfig, Perturbation


def fno(ndim: int, n_fields: int = 3, dropout: float = 0.0, seed: int = 0):
    torch.manual_seed(seed)
    return make_model(FNOConfig(width=8, modes=4, layers=2, dropout=dropout), n_fields=n_fields, ndim=ndim)


def state(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("ndim, n_fields, grids", [
    (1, 3, [(32,), (48,), (7,)]),
    (2, 4, [(16, 16), (24, 20), (8, 6)]),
])
def test_fno_shapes_on_any_grid(ndim, n_fields, grids):
    model = fno(ndim, n_fields).eval()
    for grid in grids:  # one set of weights serves every resolution, even below 2 * modes
        u = state(3, n_fields, *grid)
        out = model(u)
        assert out.shape == u.shape and torch.isfinite(out).all()
        assert not torch.equal(out, u)  # residual form still predicts a change


def test_fno_2d_uses_negative_first_axis_modes():
    """rfft keeps negative frequencies on the first axis only; they have their own weight set, which
    must reach the output (a dropped half-spectrum would make it dead weight)."""
    model = fno(2, n_fields=4).eval()
    u = state(1, 4, 16, 16)
    before = model(u)
    with torch.no_grad():
        model.spectral[0].weight[1] *= 3
    assert not torch.allclose(model(u), before)


def test_fno_is_translation_equivariant_on_the_periodic_grid():
    model = fno(1).eval()
    u = state(2, 3, 32)
    torch.testing.assert_close(model(u.roll(5, dims=-1)), model(u).roll(5, dims=-1), rtol=1e-5, atol=1e-5)


def test_eval_mode_without_perturbation_is_deterministic():
    model = fno(1, dropout=0.3).eval()
    u = state(2, 3, 32)
    first = model(u)
    assert torch.equal(model(u), first)
    candidates = model.sample_next(u, 4, Perturbation(), torch.Generator().manual_seed(0))
    assert candidates.shape == (2, 4, 3, 32)
    for k in range(4):
        torch.testing.assert_close(candidates[:, k], first, rtol=0, atol=1e-6)


def test_sample_next_n1_without_perturbation_equals_forward():
    model = fno(2, n_fields=4).eval()
    u = state(3, 4, 16, 16)
    assert torch.equal(model.sample_next(u, 1)[:, 0], model(u))


@pytest.mark.parametrize("noise", [
    Perturbation(dropout=True),
    Perturbation(latent_sigma=0.1),
    Perturbation(input_eps=0.05),
], ids=["mc_dropout", "latent_noise", "input_perturb"])
def test_perturbations_give_distinct_seeded_candidates(noise):
    model = fno(1, dropout=0.2).eval()
    u = state(2, 3, 32)
    cands = model.sample_next(u, 5, noise, torch.Generator().manual_seed(7))
    assert cands.shape == (2, 5, 3, 32)
    flat = cands.flatten(2)
    gaps = torch.cdist(flat, flat)  # (B, N, N) pairwise distances
    off_diagonal = ~torch.eye(5, dtype=torch.bool)
    assert (gaps[:, off_diagonal] > 1e-4).all()
    again = model.sample_next(u, 5, noise, torch.Generator().manual_seed(7))
    other = model.sample_next(u, 5, noise, torch.Generator().manual_seed(8))
    assert torch.equal(cands, again)
    assert not torch.allclose(cands, other)
    assert not model.training  # sampling must not flip the model into train mode


def test_mc_dropout_is_a_no_op_without_dropout():
    """A model trained with dropout 0 has nothing to drop: MC-dropout candidates all coincide."""
    model = fno(1, dropout=0.0).eval()
    u = state(2, 3, 32)
    cands = model.sample_next(u, 3, Perturbation(dropout=True), torch.Generator().manual_seed(0))
    torch.testing.assert_close(cands, model(u).unsqueeze(1).expand_as(cands), rtol=0, atol=1e-6)


def test_training_mode_dropout_is_active():
    model = fno(1, dropout=0.5).train()
    u = state(2, 3, 32)
    assert not torch.allclose(model(u), model(u))
