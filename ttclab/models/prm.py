"""Process reward model: a small convolutional scorer of candidate next states (1D and 2D).

Inputs, all normalized with the operator's normalizer: the current state s (B, C, *X), a set of N
candidates c (B, N, C, *X) and an anchor a (B, C, *X), a guess of the next state without the
sampling noise:
    anchor = "set_mean"   a = mean_j c_j over the finite candidates (only the set is needed)
    anchor = "operator"   a = F(s), the deterministic operator's prediction (one extra forward pass
                          per state; the reward embeds the operator to compute it)
Both depend only on the state and the candidates, as the reward contract requires.

The true MSE of a candidate c_i = a + d_i to the truth y is |d_i|^2 + 2 <d_i, a - y> + |a - y|^2:
for the stochastic samplers the noise term |d_i|^2 dominates the spread between candidates, and the
cross term needs the operator's error a - y. Two heads:
    reference  score_i = -mean_x sum_ch w_ch ((c_i - r) / sigma_ch)^2,  r = a + sigma * g(s, a - s)
               g a conv net (one pass per state, zero-initialized so r starts at a) that learns
               where the truth lies relative to the anchor; sigma_ch the RMS of c - a; w_ch > 0.
    local      score_i = mean_x h(features_i)(x), h a conv net on the per-candidate stack of
               `features` (state s, candidate c_i, increment c_i - s, deviation c_i - a), run on
               all B*N candidates; the score is a sum of local contributions like the MSE itself.
Inputs are divided by per-channel RMS values fitted on training data (`fit_scale`), since increments
and deviations are orders of magnitude smaller than the states. Convolutions are circular (the PDEs
here are periodic), so both heads are grid-size agnostic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

FEATURES = ("state", "candidate", "increment", "deviation")
HEADS = ("reference", "local")
ANCHORS = ("operator", "set_mean")
SELECT = ("ranking", "loss")


@dataclass
class PRMConfig:
    # architecture
    head: str = "reference"  # reference | local (see the module docstring)
    anchor: str = "operator"  # operator | set_mean
    width: int = 32
    layers: int = 3
    kernel: int = 5
    features: tuple[str, ...] = ("state", "increment", "deviation")  # local head only
    # training
    loss: str = "triplet"  # PRM_LOSSES: triplet (margin hinge) | bradley_terry (pairwise logistic)
    margin: float = 0.1  # triplet margin: required score gap best > median and median > worst
    ref_weight: float = 1.0  # reference head: weight of the regression of r on the truth
    # Which epoch is kept: ranking = the best held-out Spearman against the label (val/loss is then
    # -val/spearman); loss = the lowest held-out objective, which the reference-regression term
    # dominates, so it kept the untrained anchor (epoch 0) in every run measured.
    select: str = "ranking"
    epochs: int = 20
    batch_size: int = 64  # states per optimizer step
    lr: float = 1e-2
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    set_size: int = 5  # candidates scored together per state in training (match the TTC branching)
    val_fraction: float = 0.2  # of the triplet ICs, held out for validation and the reported metrics
    seed: int = 0

    def validate(self):
        if self.head not in HEADS or self.anchor not in ANCHORS:
            raise ValueError(f"head must be one of {', '.join(HEADS)} and anchor one of {', '.join(ANCHORS)}")
        unknown = [f for f in self.features if f not in FEATURES]
        if unknown or not self.features:
            raise ValueError(f"features must be a non-empty subset of {', '.join(FEATURES)}; got {list(self.features)}")
        if min(self.width, self.layers, self.epochs, self.batch_size) < 1 or self.kernel % 2 == 0:
            raise ValueError("need positive width, layers, epochs, batch_size and an odd kernel")
        if self.margin < 0 or self.ref_weight < 0 or self.lr <= 0 or not 0 < self.val_fraction < 1:
            raise ValueError("need margin >= 0, ref_weight >= 0, lr > 0 and 0 < val_fraction < 1")
        if self.select not in SELECT:
            raise ValueError(f"select must be one of {', '.join(SELECT)}, got {self.select!r}")
        if self.set_size < 3:
            raise ValueError("set_size must be >= 3 (a triplet is drawn from each set)")


def set_mean(cands: torch.Tensor) -> torch.Tensor:
    """cands (B, N, C, *X) -> (B, C, *X) mean over the finite candidates only, so one NaN/Inf
    candidate (which the controller drops anyway) does not poison the scores of the others."""
    ok = torch.isfinite(cands).flatten(2).all(2).view(*cands.shape[:2], *[1] * (cands.ndim - 2))
    return torch.where(ok, cands, 0).sum(1) / ok.sum(1).clamp_min(1)


def candidate_features(state, cands, anchor, features: tuple[str, ...]) -> torch.Tensor:
    """state, anchor (B, C, *X), cands (B, N, C, *X) -> (B, N, F*C, *X) stack in `features` order."""
    s = state.unsqueeze(1).expand_as(cands)
    parts = {"state": lambda: s, "candidate": lambda: cands, "increment": lambda: cands - s,
             "deviation": lambda: cands - anchor.unsqueeze(1)}
    return torch.cat([parts[f]() for f in features], dim=2)


def conv_stack(conv, n_in: int, n_out: int, cfg: PRMConfig) -> nn.Sequential:
    """`layers` circular-padded convolutions + GELU, then a 1x1 convolution to n_out channels."""
    blocks, width_in = [], n_in
    for _ in range(cfg.layers):
        blocks += [conv(width_in, cfg.width, cfg.kernel, padding=cfg.kernel // 2, padding_mode="circular"), nn.GELU()]
        width_in = cfg.width
    return nn.Sequential(*blocks, conv(cfg.width, n_out, 1))


def _rms(t: torch.Tensor, channel_dim: int) -> torch.Tensor:
    return t.transpose(0, channel_dim).flatten(1).square().mean(1).sqrt().clamp_min(1e-8)


class PRM(nn.Module):
    """(state (B, C, *X), candidates (B, N, C, *X), anchor (B, C, *X) | None) -> scores (B, N),
    higher is better. `anchor` is required for anchor="operator" and ignored for "set_mean"."""

    def __init__(self, cfg: PRMConfig, n_fields: int, ndim: int):
        super().__init__()
        if ndim not in (1, 2):
            raise ValueError(f"the PRM supports 1D and 2D states, not {ndim}D")
        self.cfg, self.ndim = cfg, ndim
        conv = nn.Conv1d if ndim == 1 else nn.Conv2d
        # Per-channel divisors, 1 until fitted on training data (`fit_scale`).
        self.register_buffer("feat_scale", torch.ones(len(cfg.features) * n_fields))  # local head inputs
        self.register_buffer("ref_scale", torch.ones(2 * n_fields))  # reference head inputs (s, a - s)
        self.register_buffer("dev_scale", torch.ones(n_fields))  # sigma: RMS of c - a
        if cfg.head == "local":
            self.net = conv_stack(conv, len(cfg.features) * n_fields, 1, cfg)
        else:
            self.net = conv_stack(conv, 2 * n_fields, n_fields, cfg)
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)
            self.log_weight = nn.Parameter(torch.zeros(n_fields))

    def per_channel(self, v: torch.Tensor, lead: int = 1) -> torch.Tensor:
        """A per-channel vector shaped to broadcast over (lead dims..., C, *X)."""
        return v.view(*[1] * lead, -1, *[1] * self.ndim)

    def _anchor(self, cands: torch.Tensor, anchor: torch.Tensor | None) -> torch.Tensor:
        if self.cfg.anchor == "set_mean":
            return set_mean(cands)
        if anchor is None:
            raise ValueError("this PRM uses anchor='operator': pass the operator's deterministic prediction")
        return anchor

    @torch.no_grad()
    def fit_scale(self, state: torch.Tensor, cands: torch.Tensor, anchor: torch.Tensor | None = None) -> None:
        """Set the divisors to per-channel RMS values over (a sample of) the training data."""
        a = self._anchor(cands, anchor)
        self.feat_scale.copy_(_rms(candidate_features(state, cands, a, self.cfg.features), 2))
        self.ref_scale.copy_(_rms(torch.cat([state, a - state], 1), 1))
        self.dev_scale.copy_(_rms(cands - a.unsqueeze(1), 2))

    def reference(self, state: torch.Tensor, cands: torch.Tensor, anchor: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, *X): r = a + sigma * g(s, a - s), one network pass per state (not per candidate)."""
        a = self._anchor(cands, anchor)
        x = torch.cat([state, a - state], 1) / self.per_channel(self.ref_scale)
        return a + self.net(x) * self.per_channel(self.dev_scale)

    def score(self, state, cands, anchor=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> (scores (B, N), the reference r (B, C, *X) for the reference head, else None)."""
        b, n = cands.shape[:2]
        if self.cfg.head == "local":
            a = self._anchor(cands, anchor)
            f = candidate_features(state, cands, a, self.cfg.features) / self.per_channel(self.feat_scale, 2)
            return self.net(f.flatten(0, 1)).flatten(1).mean(1).view(b, n), None  # all B*N as one batch
        ref = self.reference(state, cands, anchor)
        d = (cands - ref.unsqueeze(1)) / self.per_channel(self.dev_scale, 2)
        return -(self.per_channel(self.log_weight.exp(), 2) * d.square()).flatten(2).mean(2), ref

    def forward(self, state: torch.Tensor, cands: torch.Tensor, anchor: torch.Tensor | None = None) -> torch.Tensor:
        return self.score(state, cands, anchor)[0]
