"""Stochastic next-state candidates from the operator: state (B, C, *X) -> candidates (B, N, C, *X).

Samplers (combine with '+', e.g. "latent_noise+input_perturb"):
    mc_dropout     dropout kept active at inference (needs model.dropout > 0)
    latent_noise   Gaussian noise of scale `latent_sigma` on the operator's lifted latent
    input_perturb  Gaussian noise of scale `input_eps` on the normalized input
    ensemble       the members of a deep ensemble (`members` operators trained with seeds seed + i,
                   sampling/ensemble.py), N / M candidates each; with a noise part, noisy ones
All B*N candidates go through the operator as one batch; one torch.Generator seeds them all.
This module turns the config into the operator contract's `Perturbation` (models/operator.py) and
the operator checks it against its declared capabilities (`latent`, `dropout_rate`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.operator import Perturbation

SAMPLERS = ("mc_dropout", "latent_noise", "input_perturb", "ensemble")


@dataclass
class SamplingConfig:
    sampler: str = "latent_noise"
    latent_sigma: float = 0.02  # scale of latent noise (normalized units of the lifted latent)
    input_eps: float = 0.005  # scale of input noise (normalized units)
    seed: int = 0
    members: int = 3  # operators in the deep ensemble (sampler `ensemble` only)

    def validate(self):
        unknown = [s for s in self.parts if s not in SAMPLERS]
        if unknown:
            raise ValueError(f"unknown sampler {unknown[0]!r}; valid: {', '.join(SAMPLERS)} (combine with '+')")
        if self.latent_sigma < 0 or self.input_eps < 0 or self.members < 1:
            raise ValueError("latent_sigma and input_eps must be >= 0, members >= 1")

    @property
    def parts(self) -> list[str]:
        return [s.strip() for s in self.sampler.split("+") if s.strip()]


def perturbation(cfg: SamplingConfig) -> Perturbation:
    parts = cfg.parts
    return Perturbation(
        dropout="mc_dropout" in parts,
        latent_sigma=cfg.latent_sigma if "latent_noise" in parts else 0.0,
        input_eps=cfg.input_eps if "input_perturb" in parts else 0.0,
    )


@torch.no_grad()
def candidates(model, state: torch.Tensor, n: int, cfg: SamplingConfig, generator: torch.Generator) -> torch.Tensor:
    """state (B, C, *X) normalized -> (B, n, C, *X) normalized candidates, one batched forward pass."""
    return model.eval().sample_next(state, n, perturbation(cfg), generator)


@torch.no_grad()
def latent_candidates(model, z: torch.Tensor, state: torch.Tensor, n: int, cfg: SamplingConfig,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent rollout: latents z (B, *L) of states (B, C, *X) -> (next latents (B, n, *L), their decoded
    candidates (B, n, C, *X) normalized), one batched pass (models/operator.py sample_latent)."""
    return model.eval().sample_latent(z, state, n, perturbation(cfg), generator)
