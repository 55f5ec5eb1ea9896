"""Fourier neural operator (1D/2D) predicting the next snapshot in residual form, u_{t+1} = u_t + f(u_t).

Each block: h <- gelu(K h + W h), K a truncated spectral convolution, W a 1x1 convolution, with
dropout inside the block. Grid-size agnostic: only the lowest `modes` Fourier modes carry weights.

Stochastic hooks for TTC candidates, all optional and seeded through one torch.Generator:
dropout kept on (MC-dropout), Gaussian noise on the lifted latent, Gaussian noise on the input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import MODELS


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


@dataclass
class Perturbation:
    """Which stochasticity is on while sampling; all off == the deterministic operator."""

    dropout: bool = False
    latent_sigma: float = 0.0
    input_eps: float = 0.0

    @property
    def active(self) -> bool:
        return self.dropout or self.latent_sigma > 0 or self.input_eps > 0


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


def seeded_dropout(h: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Inverted dropout whose mask comes from `generator`, so MC-dropout candidates are reproducible."""
    keep = torch.rand(h.shape, generator=generator, device=h.device) >= p
    return h * keep / (1 - p)


@MODELS.register("fno")
class FNO(nn.Module):
    Config = FNOConfig

    def __init__(self, cfg: FNOConfig, n_fields: int, ndim: int):
        super().__init__()
        self.cfg, self.ndim = cfg, ndim
        conv = nn.Conv1d if ndim == 1 else nn.Conv2d
        self.lift = conv(n_fields, cfg.width, 1)
        self.spectral = nn.ModuleList(SpectralConv(cfg.width, cfg.modes, ndim) for _ in range(cfg.layers))
        self.pointwise = nn.ModuleList(conv(cfg.width, cfg.width, 1) for _ in range(cfg.layers))
        self.project = nn.Sequential(conv(cfg.width, 2 * cfg.width, 1), nn.GELU(), conv(2 * cfg.width, n_fields, 1))

    def _drop(self, h, mc: bool, generator):
        p = self.cfg.dropout
        if p == 0 or not (self.training or mc):
            return h
        if self.training and not mc:
            return nn.functional.dropout(h, p, training=True)
        return seeded_dropout(h, p, generator)

    def forward(self, u: torch.Tensor, noise: Perturbation | None = None, generator=None) -> torch.Tensor:
        """u (B, C, *X) normalized -> next state (B, C, *X) normalized."""
        noise = noise or Perturbation()
        x = u
        if noise.input_eps > 0:
            x = x + noise.input_eps * torch.randn(x.shape, generator=generator, device=x.device)
        h = self.lift(x)
        if noise.latent_sigma > 0:
            h = h + noise.latent_sigma * torch.randn(h.shape, generator=generator, device=h.device)
        for k, (spectral, pointwise) in enumerate(zip(self.spectral, self.pointwise)):
            z = spectral(h) + pointwise(h)
            h = nn.functional.gelu(z) if k < len(self.spectral) - 1 else z
            h = self._drop(h, noise.dropout, generator)
        return u + self.project(h)

    def sample_next(self, u: torch.Tensor, n: int, noise: Perturbation | None = None, generator=None) -> torch.Tensor:
        """u (B, C, *X) -> n candidates (B, n, C, *X), all B*n through the network as one batch.
        With no active perturbation every candidate equals the deterministic prediction."""
        b = u.shape[0]
        flat = u.unsqueeze(1).expand(b, n, *u.shape[1:]).reshape(b * n, *u.shape[1:])
        return self(flat, noise, generator).view(b, n, *u.shape[1:])
