"""Query sampling for any-point decoders (UPT): train the decoder on a random subset of the cells.

The encoder still reads the whole grid; the decoder is queried at Q of the G cells of each sample,
so its cost (cross-attention and head, linear in Q) and the loss's memory shrink by Q / G. Test time
decodes densely. Strategies, per sample and per batch (a fresh draw every optimizer step):
    uniform     Q distinct cells uniformly at random
    stratified  the row-major cell index 0..G-1 cut into Q equal runs, one cell uniformly in each
                (1D: one query per interval of G / Q cells; 2D: per run of a row band), so no
                region goes unqueried by chance
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import UserError


class QueryError(UserError):
    """Query sampling asked of a grid or a loss that cannot take it."""


@dataclass
class QuerySamplingConfig:
    enabled: bool = False
    num_queries: int = 64  # Q cells per sample; at most the grid's cell count
    strategy: Literal["uniform", "stratified"] = "uniform"

    def validate(self):
        if self.num_queries < 1:
            raise ValueError("num_queries must be >= 1")


def sample_queries(cfg: QuerySamplingConfig, b: int, cells: int, device=None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """-> (B, Q) indices into the row-major flattened grid of `cells` cells, distinct within a row."""
    q = cfg.num_queries
    if q > cells:
        raise QueryError(f"train.query_sampling.num_queries={q} exceeds the grid's {cells} cells; "
                         f"set it to at most {cells} (or query_sampling.enabled=false for dense decoding)")
    if cfg.strategy == "uniform":
        return torch.rand(b, cells, generator=generator, device=device).argsort(dim=1)[:, :q]
    # stratum i covers [floor(i G / Q), floor((i + 1) G / Q)): Q disjoint non-empty runs (Q <= G)
    edges = torch.arange(q + 1, device=device) * cells // q
    width = (edges[1:] - edges[:-1]).to(torch.float32)
    offset = (torch.rand(b, q, generator=generator, device=device) * width).long()
    return edges[:-1] + offset.minimum(width.long() - 1)


def gather_cells(u: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """u (B, C, *X), idx (B, Q) -> values at those cells (B, Q, C)."""
    flat = u.flatten(2)
    return flat.gather(2, idx.unsqueeze(1).expand(-1, flat.shape[1], -1)).transpose(1, 2)
