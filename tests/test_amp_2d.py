"""train.amp / train.compile (loop.fit) and the 2D example figure: the FFTs stay fp32 under
autocast, every operator trains under bf16 and fp16, a compiler failure is one line."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from ttclab.models.fno import SpectralConv
from ttclab.training import loop


def test_spectral_convolution_stays_fp32_under_autocast():
    torch.manual_seed(0)
    conv, h = SpectralConv(4, 3, 2), torch.randn(2, 4, 8, 8)
    plain = conv(h)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = conv(h.bfloat16())
    assert mixed.dtype == torch.float32
    # Only the input's rounding to bf16 (8 mantissa bits) differs, not the transform.
    assert torch.allclose(mixed, conv(h.bfloat16().float()), atol=1e-6) and not torch.equal(mixed, plain)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("kind,ndim", [("fno", 1), ("fno", 2), ("upt", 2)])
def test_every_operator_trains_under_autocast(amp, kind, ndim, tiny_project):
    from ttclab.models import MODELS

    sizes = {"fno": dict(width=8, modes=3, layers=2),
             "upt": dict(dim=8, tokens=4, patch=2, heads=2, enc_layers=1, approx_layers=1, freqs=2)}
    cfg = tiny_project("euler1d", f"train.amp={amp}", "train.epochs=1", "train.batch_size=4")
    torch.manual_seed(0)
    model = MODELS.get(kind)(MODELS.get(kind).Config(**sizes[kind]), 4 if ndim == 2 else 3, ndim)
    shape = (8, 4 if ndim == 2 else 3) + (8,) * ndim
    x, y = torch.randn(shape), torch.randn(shape).unsqueeze(1)
    seen = []
    model.register_forward_hook(lambda m, args, out: seen.append(torch.is_autocast_enabled("cpu")))
    state = loop.train(model, (x, y), (x, y), cfg.train, progress=False)
    assert np.isfinite(state["best_val"]) and seen[0] and not seen[-1]  # training autocast, validation fp32


def test_a_compiler_failure_is_one_line(monkeypatch, tiny_project):
    cfg = tiny_project("euler1d", "train.compile=true", "train.epochs=1")
    model = torch.nn.Conv1d(3, 3, 1)

    def broken(module):
        def call(*args):
            raise RuntimeError("inductor: no C++ compiler\nlong traceback")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    x = torch.randn(4, 3, 8)
    with pytest.raises(loop.TrainingError, match=r"train.compile: torch.compile failed \(RuntimeError: inductor: no "
                                                 r"C\+\+ compiler\); set train.compile=false$"):
        loop.train(model, (x, x.unsqueeze(1)), (x, x.unsqueeze(1)), cfg.train, progress=False)


def test_2d_example_figure_has_one_heat_map_per_series_time_and_field():
    from ttclab.tracking import figures

    x, y = np.linspace(0, 1, 6), np.linspace(0, 2, 4)
    truth = np.arange(5 * 2 * 6 * 4, dtype=float).reshape(5, 2, 6, 4)
    page = figures.heatmaps_at_times(x, y, ["density", "pressure"], [1, 4], {"truth": truth, "arm": truth + 1})
    traces = re.findall(r'"name":"(truth|arm) (density|pressure)"', page)
    assert sorted(set(traces)) == [(s, f) for s in ("arm", "truth") for f in ("density", "pressure")]
    assert len(traces) == 2 * 2 * 2 and "truth, step 4" in page and "arm, step 1" in page
