"""Fourier neural operator (1D/2D) predicting the next snapshot in residual form, u_{t+1} = u_t + f(u_t).

Each block: h <- gelu(K h + W h), K a truncated spectral convolution, W a 1x1 convolution, with
dropout inside the block. Grid-size agnostic: only the lowest `modes` Fourier modes carry weights.

As an `Operator` (models/operator.py) it is latent: TTC candidates come from the contract's
`sample_next` (MC-dropout in the blocks, noise on the lifted latent, noise on the input).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import MODELS
from .operator import Operator


@dataclass
class FNOConfig:
    type: str = "fno"
    width: int = 32
    modes: int = 16
    layers: int = 4
    dropout: float = 0.0  # inside each block; also the MC-dropout rate at inference

    def validate(self):
        if not 0 <= self.dropout < 1 or self.width < 1 or self.modes < 1 or self.layers < 1:
            raise ValueError("need 0 <= dropout < 1 and positive width, modes, layers")


class SpectralConv(nn.Module):
    def __init__(self, width: int, modes: int, ndim: int):
        super().__init__()
        self.modes, self.ndim = modes, ndim
        shape = (width, width) + (modes,) * ndim
        # 2D: rfft keeps non-negative frequencies on the last axis only, so the first axis needs
        # both its lowest positive and lowest negative modes (two weight sets).
        n_sets = 1 if ndim == 1 else 2
        scale = 1.0 / (width * width)
        self.weight = nn.Parameter(scale * torch.randn(n_sets, *shape, dtype=torch.cfloat))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # Always fp32, also under train.amp's autocast: FFTs in reduced precision are unreliable
        # (bf16 keeps 8 mantissa bits for sums over all cells; cuFFT's fp16 needs power-of-2 sizes).
        with torch.autocast(h.device.type, enabled=False):
            return self._mix(h.float())

    def _mix(self, h: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(-self.ndim, 0))
        hf = torch.fft.rfftn(h, dim=dims)
        out = torch.zeros_like(hf)
        m_last = min(self.modes, hf.shape[-1])
        if self.ndim == 1:
            out[..., :m_last] = torch.einsum("bix,iox->box", hf[..., :m_last], self.weight[0, ..., :m_last])
        else:
            m0 = min(self.modes, hf.shape[-2] // 2)
            w = self.weight[..., :m0, :m_last]
            out[..., :m0, :m_last] = torch.einsum("bixy,ioxy->boxy", hf[..., :m0, :m_last], w[0])
            out[..., -m0:, :m_last] = torch.einsum("bixy,ioxy->boxy", hf[..., -m0:, :m_last], w[1])
        return torch.fft.irfftn(out, s=h.shape[-self.ndim :], dim=dims)


@MODELS.register("fno")
class FNO(Operator):
    """Latent operator: encode = lift, step = the spectral blocks (dropout inside), decode = project
    and add the residual to the state being advanced."""

    Config = FNOConfig
    latent = True

    def __init__(self, cfg: FNOConfig, n_fields: int, ndim: int):
        super().__init__(n_fields, ndim)
        self.cfg, self.dropout_rate = cfg, cfg.dropout
        conv = nn.Conv1d if ndim == 1 else nn.Conv2d
        self.lift = conv(n_fields, cfg.width, 1)
        self.spectral = nn.ModuleList(SpectralConv(cfg.width, cfg.modes, ndim) for _ in range(cfg.layers))
        self.pointwise = nn.ModuleList(conv(cfg.width, cfg.width, 1) for _ in range(cfg.layers))
        self.project = nn.Sequential(conv(cfg.width, 2 * cfg.width, 1), nn.GELU(), conv(2 * cfg.width, n_fields, 1))

    def encode(self, u: torch.Tensor) -> torch.Tensor:
        return self.lift(u)

    def step(self, h: torch.Tensor) -> torch.Tensor:
        for k, (spectral, pointwise) in enumerate(zip(self.spectral, self.pointwise)):
            z = spectral(h) + pointwise(h)
            h = self.drop(nn.functional.gelu(z) if k < len(self.spectral) - 1 else z)
        return h

    def decode(self, h: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return u + self.project(h)
