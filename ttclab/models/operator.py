"""The operator contract: what every learned simulator in the MODELS registry implements.

    forward(u)                                   u (B, C, *X) normalized -> next state (B, C, *X), deterministic
    sample_next(u, n, perturbation, generator)   -> n candidates (B, n, C, *X), all B*n as one batch

A new operator subclasses `Operator`, declares its capabilities and writes `forward`:
    ndims         spatial dimensions it can run on; construction refuses any other
    latent        True if it has the latent hooks encode/step/decode with
                  forward(u) = decode(step(encode(u)), u), so latent noise has a place to go
    dropout_rate  the rate of the dropout it applies with `self.drop(h)` (0 = none to sample)
    absolute_decode  True if decode(h, u) reads only u's grid, not its values (UPT, not FNO's u + P(h)):
                  the latent alone determines the fields, so ttc.rollout=latent and the inverse losses apply
`sample_next` comes from the base: it repeats the batch n times and applies the `Perturbation`
(what sampling/ builds from SamplingConfig; models only see this small spec):
    input_eps     u' = u + eps * z: the network reads u', a latent model still advances u
    latent_sigma  h = encode(u') + sigma * z, before step (latent models only)
    dropout       `self.drop` keeps dropout on at inference, masks drawn from `generator`
with z standard normal from `generator`, drawn in that order, so equal seeds give equal candidates
and an inactive perturbation gives n copies of forward(u).

Registering one (a module in models/ plus its import line in models/__init__.py); `model.type: mlp1d`
in a project then trains, samples and checkpoints it, and test_operator_contract.py checks it:

    @dataclass
    class MLP1DConfig:
        type: str = "mlp1d"
        width: int = 16
        dropout: float = 0.0

    @MODELS.register("mlp1d")
    class PointwiseMLP(Operator):
        Config, ndims = MLP1DConfig, (1,)

        def __init__(self, cfg: MLP1DConfig, n_fields: int, ndim: int):
            super().__init__(n_fields, ndim)
            self.cfg, self.dropout_rate = cfg, cfg.dropout
            self.net = nn.Sequential(nn.Conv1d(n_fields, cfg.width, 1), nn.GELU(), nn.Conv1d(cfg.width, n_fields, 1))

        def forward(self, u):
            return u + self.drop(self.net(u))
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserError


class OperatorError(UserError, ValueError):
    """An operator asked for something it did not declare (a grid dimension, latent noise, dropout)."""


@dataclass(frozen=True)
class Perturbation:
    """Which stochasticity is on while sampling; all off == the deterministic operator."""

    dropout: bool = False
    latent_sigma: float = 0.0
    input_eps: float = 0.0

    @property
    def active(self) -> bool:
        return self.dropout or self.latent_sigma > 0 or self.input_eps > 0


def seeded_dropout(h: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Inverted dropout whose mask comes from `generator`, so MC-dropout candidates are reproducible."""
    keep = torch.rand(h.shape, generator=generator, device=h.device) >= p
    return h * keep / (1 - p)


class Operator(nn.Module):
    ndims: tuple[int, ...] = (1, 2)
    latent: bool = False
    dropout_rate: float = 0.0
    absolute_decode: bool = False

    def __init__(self, n_fields: int, ndim: int):
        super().__init__()
        if ndim not in self.ndims:
            dims = " and ".join(f"{d}D" for d in self.ndims)
            raise OperatorError(f"model {type(self).__name__} supports {dims} states, not {ndim}D; "
                                f"choose another model.type for this problem")
        self.n_fields, self.ndim = n_fields, ndim
        self._mc_generator: torch.Generator | None = None
        self._mc = False

    def encode(self, u: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} declares no latent space")

    def step(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} declares no latent space")

    def decode(self, h: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} declares no latent space")

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if not self.latent:
            raise NotImplementedError(f"{type(self).__name__} must implement forward")
        return self.decode(self.step(self.encode(u)), u)

    def drop(self, h: torch.Tensor) -> torch.Tensor:
        """Dropout at `dropout_rate`: ordinary in training, seeded while sampling MC-dropout, else off."""
        p = self.dropout_rate
        if p == 0 or not (self.training or self._mc):
            return h
        if self._mc:
            return seeded_dropout(h, p, self._mc_generator)
        return nn.functional.dropout(h, p, training=True)

    @contextmanager
    def _mc_dropout(self, on: bool, generator: torch.Generator | None):
        self._mc, self._mc_generator = on, generator
        try:
            yield
        finally:
            self._mc, self._mc_generator = False, None

    def sample_next(self, u: torch.Tensor, n: int, perturbation: Perturbation | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """u (B, C, *X) -> n candidates (B, n, C, *X), all B*n through the network as one batch.
        With no active perturbation every candidate equals forward(u)."""
        p = self._checked(perturbation)
        b = u.shape[0]
        flat = u.unsqueeze(1).expand(b, n, *u.shape[1:]).reshape(b * n, *u.shape[1:])
        seen = flat
        if p.input_eps > 0:
            seen = flat + p.input_eps * torch.randn(flat.shape, generator=generator, device=u.device)
        with self._mc_dropout(p.dropout, generator):
            if p.latent_sigma > 0:
                h = self.encode(seen)
                h = h + p.latent_sigma * torch.randn(h.shape, generator=generator, device=h.device)
                out = self.decode(self.step(h), flat)
            elif self.latent:
                out = self.decode(self.step(self.encode(seen)), flat)
            else:
                out = self(seen)
        return out.view(b, n, *u.shape[1:])

    def sample_latent(self, z: torch.Tensor, u: torch.Tensor, n: int, perturbation: Perturbation | None = None,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of a latent rollout (ttc.rollout=latent, `absolute_decode` operators): z (B, *L) the
        latent of state u (B, C, *X) -> (z' (B, n, *L), D(z') (B, n, C, *X)) with z' = A(z + sigma e),
        MC-dropout masks from `generator` (in A and D only: z was encoded once, deterministically);
        with latent noise alone the same candidates as sample_next(u, n) when z = E(u)."""
        p = self._checked(perturbation)
        if p.input_eps > 0:
            raise OperatorError("sampling.sampler input_perturb perturbs the fields, which a latent rollout never "
                                "re-reads; use latent_noise or mc_dropout, or set ttc.rollout=physical")
        b = z.shape[0]
        rep = lambda t: t.unsqueeze(1).expand(b, n, *t.shape[1:]).reshape(b * n, *t.shape[1:])  # noqa: E731
        h, grid = rep(z), rep(u)
        with self._mc_dropout(p.dropout, generator):
            if p.latent_sigma > 0:
                h = h + p.latent_sigma * torch.randn(h.shape, generator=generator, device=h.device)
            h = self.step(h)
            out = self.decode(h, grid)
        return h.view(b, n, *z.shape[1:]), out.view(b, n, *u.shape[1:])

    def _checked(self, perturbation: Perturbation | None) -> Perturbation:
        """The perturbation, refused in one line if it asks for a capability this operator lacks."""
        p = perturbation or Perturbation()
        name = type(self).__name__
        if p.latent_sigma > 0 and not self.latent:
            raise OperatorError(f"sampling.sampler latent_noise needs a latent operator, not {name}; "
                                f"use input_perturb or mc_dropout")
        if p.dropout and self.dropout_rate == 0:
            raise OperatorError(f"sampling.sampler mc_dropout needs an operator with dropout ({name} has none); "
                                f"retrain with model.dropout > 0 or use latent_noise")
        return p
