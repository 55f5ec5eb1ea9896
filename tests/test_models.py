"""The FNO operator: shapes, grid-size agnosticism, spectral weights (the sampling contract it shares with
every operator is checked in test_operator_contract.py)."""

from __future__ import annotations

import pytest
import torch

from ttclab.models import make_model
from ttclab.models.fno import FNOConfig


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


def test_training_mode_dropout_is_active_and_eval_mode_is_deterministic():
    model = fno(1, dropout=0.5).train()
    u = state(2, 3, 32)
    assert not torch.allclose(model(u), model(u))
    model.eval()
    assert torch.equal(model(u), model(u))
