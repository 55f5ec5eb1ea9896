"""Universal Physics Transformer (UPT, Alkin et al. 2024): a latent operator whose latent is a set of
M tokens of width D, advanced in time without going back to the grid.

    encode   u (B, C, *X) -> patches of [u, phi(x)] -> transformer blocks -> perceiver pooling -> z (B, M, D)
    step     z -> z + approximator(z)        (residual transformer blocks on the tokens)
    decode   z, query coords q -> fields u(q): phi(q) cross-attends to z, then an MLP per query

phi(x) are Fourier features of the cell-centre coordinates in the unit box, x_i = (i + 1/2) / n per axis,
phi = [sin(2 pi k x), cos(2 pi k x)] for k = 1..freqs: periodic, so they fit the periodic grids of the
problems, and the operator needs no domain (the contract builds it from n_fields and ndim only).
The decoder is grid-size agnostic: `decode_at` takes any query points; `decode(z, u)` queries every cell of
u's grid (dense, as at test time) and returns absolute fields, not a residual on u, so that
D(E(u)) = u is a meaningful inverse (training/losses.py). Dropout (`self.drop`, seeded while sampling
MC-dropout) sits in every block's MLP; latent noise lands on the tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from . import MODELS
from .operator import Operator


@dataclass
class UPTConfig:
    type: str = "upt"
    dim: int = 32  # token width D
    tokens: int = 16  # latent tokens M
    patch: int = 4  # cells per patch along each axis (grids are circularly padded to a multiple)
    heads: int = 4
    enc_layers: int = 1
    approx_layers: int = 2
    freqs: int = 4  # Fourier features per axis: 2 * freqs
    dropout: float = 0.0

    def validate(self):
        if not 0 <= self.dropout < 1 or min(self.dim, self.tokens, self.patch, self.heads, self.freqs) < 1:
            raise ValueError("need 0 <= dropout < 1 and positive dim, tokens, patch, heads, freqs")
        if self.dim % self.heads:
            raise ValueError(f"dim={self.dim} must be a multiple of heads={self.heads}")
        if self.enc_layers < 0 or self.approx_layers < 1:
            raise ValueError("need enc_layers >= 0 and approx_layers >= 1")


def cell_centres(shape: tuple[int, ...]) -> torch.Tensor:
    """(prod(shape), ndim) cell centres x_i = (i + 1/2) / n per axis, in row-major grid order."""
    axes = [(torch.arange(n) + 0.5) / n for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(shape))


def fourier_features(x: torch.Tensor, freqs: int) -> torch.Tensor:
    """x (..., ndim) in [0, 1) -> (..., 2 * freqs * ndim): sin and cos of 2 pi k x, k = 1..freqs."""
    k = torch.arange(1, freqs + 1, dtype=x.dtype, device=x.device)
    angle = 2 * math.pi * x.unsqueeze(-1) * k
    return torch.cat([angle.sin(), angle.cos()], dim=-1).flatten(-2)


class Attention(nn.Module):
    """Multi-head attention of queries q (B, Q, D) over context c (B, K, D)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.kv, self.out = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)

    def forward(self, q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        b, nq, d = q.shape
        split = lambda t: t.view(b, t.shape[1], self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        k, v = self.kv(c).chunk(2, dim=-1)
        h = nn.functional.scaled_dot_product_attention(split(self.q(q)), split(k), split(v))
        return self.out(h.transpose(1, 2).reshape(b, nq, d))


class Block(nn.Module):
    """Pre-norm block: x <- x + attn(ln x, ln c); x <- x + drop(mlp(ln x)); c = x for self-attention.
    `drop` is the operator's `Operator.drop`, so MC-dropout masks come from the sampling generator."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm_q, self.norm_c, self.norm_mlp = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, drop, c: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm_q(x), self.norm_c(x if c is None else c))
        return x + drop(self.mlp(self.norm_mlp(x)))


@MODELS.register("upt")
class UPT(Operator):
    Config = UPTConfig
    latent = True
    # decode(z, u) reads only u's grid: train.loss=upt_inverse may invert it, and ttc.rollout=latent
    # may step z without going back to the grid
    absolute_decode = True

    def __init__(self, cfg: UPTConfig, n_fields: int, ndim: int):
        super().__init__(n_fields, ndim)
        self.cfg, self.dropout_rate = cfg, cfg.dropout
        d, n_feat = cfg.dim, 2 * cfg.freqs * ndim
        conv = nn.Conv1d if ndim == 1 else nn.Conv2d
        self.embed = conv(n_fields + n_feat, d, cfg.patch, stride=cfg.patch)
        self.enc_blocks = nn.ModuleList(Block(d, cfg.heads) for _ in range(cfg.enc_layers))
        self.latent_queries = nn.Parameter(torch.randn(cfg.tokens, d) / math.sqrt(d))
        self.pool = Block(d, cfg.heads)
        self.approx = nn.ModuleList(Block(d, cfg.heads) for _ in range(cfg.approx_layers))
        self.query_embed = nn.Sequential(nn.Linear(n_feat, d), nn.GELU(), nn.Linear(d, d))
        self.dec = Block(d, cfg.heads)
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, n_fields))

    def encode(self, u: torch.Tensor) -> torch.Tensor:
        b, grid = u.shape[0], u.shape[2:]
        feat = fourier_features(cell_centres(grid).to(u), self.cfg.freqs)  # (N, F)
        x = torch.cat([u, feat.T.reshape(1, -1, *grid).expand(b, -1, *grid)], dim=1)
        pad = [p for n in reversed(grid) for p in (0, (-n) % self.cfg.patch)]  # right end of each axis
        if any(pad):
            x = nn.functional.pad(x, pad, mode="circular")
        h = self.embed(x).flatten(2).transpose(1, 2)  # (B, patches, D)
        for block in self.enc_blocks:
            h = block(h, self.drop)
        return self.pool(self.latent_queries.expand(b, -1, -1), self.drop, h)

    def step(self, z: torch.Tensor) -> torch.Tensor:
        for block in self.approx:
            z = block(z, self.drop)
        return z

    def decode_at(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Fields at query points x (B, Q, ndim) or (Q, ndim) in [0, 1): (B, Q, n_fields)."""
        q = self.query_embed(fourier_features(x, self.cfg.freqs))
        q = q.expand(z.shape[0], -1, -1) if q.dim() == 2 else q
        return self.head(self.dec(q, self.drop, z))

    def decode_cells(self, z: torch.Tensor, u: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Fields at cells idx (B, Q) of u's row-major grid: (B, Q, n_fields) (query-sampled training)."""
        return self.decode_at(z, cell_centres(u.shape[2:]).to(u)[idx])

    def decode(self, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        grid = u.shape[2:]
        out = self.decode_at(z, cell_centres(grid).to(u))  # (B, N, C)
        return out.transpose(1, 2).reshape(u.shape[0], self.n_fields, *grid)
