"""Tiny recursive controller (TRC): a control sequence refined by a small network applied recursively.

    z_init = enc(x0, target, target - x0, horizon features)
    V_0 = dec_0(z_init),  U_0 = u_max tanh(V_0)                      first guess
    repeat H_cycles times:
        repeat L_cycles times:  z_L <- f_L(z_L + z_H + z_init + emb(U / u_max))
        z_H <- f_H(z_H + z_L)
        V <- V + dec(z_H),   U = u_max tanh(V)                         residual refinement
        value <- head(z_H)                                             predicted cost of U

The refinement is residual in the pre-tanh space, so every U is inside the bound. The single-latent
variant keeps one latent z (z <- f(z + z_init + emb(U)) L_cycles times per cycle, decoded from z).
f_L, f_H are stacks of post-norm residual MLP blocks, h <- LN(h + W2 gelu(W1 h)): the norm after the
residual keeps the latents bounded however often the blocks are applied.

With `grad_last_only` the first H_cycles - 1 cycles run without autograd and only the last cycle
is differentiated (TRM's memory saver): identical forward values, a graph of one cycle instead of H.
The carried V, z_H, z_L enter the last cycle as start + (a constant the truncated cycles added), so
the gradient still reaches the first-guess decoder, the encoder and z_L0 through them: cut off, the
first guess of a behaviour-cloned controller (whose loss sees only the final U) stayed random.

The value head reads a detached z_H: trained jointly, its loss pulled the shared latents away from
precise controls (double integrator BC, small preset, 40 epochs: 92% success without it, 48% with
value_weight 0.1), so it is a probe of what the latent knows about the cost, not a shaper of it.

Adaptive halting (`halting: act`): a halting head, also on a detached latent, reads the latent of
iterate h (z_init for the first guess, z_H after cycle h) and predicts g_h, the improvement the next
cycle will bring, log(1 + c_h/s) - log(1 + c_{h+1}/s) with s the teacher's mean cost (trained on the
realized improvement, losses.halt_loss; ~ (c_h - c_{h+1}) / s near the teacher's cost). The model trains max_H_cycles cycles; called with `halt=t` it
freezes each problem's controls at the first iterate whose g_h < t (so at most max_H_cycles
cycles) and reports the cycles each problem used. A t that never fires gives the fixed-H
controls bit for bit: the freeze is a torch.where whose mask is all True.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from . import MODELS

# preset -> (latent size, blocks per latent network); about 0.1M / 0.4M / 2M parameters for the
# two-level controller (the decoders grow with horizon * n_control, so counts vary by problem).
PRESETS = {"small": (96, 1), "medium": (144, 2), "large": (272, 3)}


@dataclass
class TRCModelConfig:
    type: str = "trc"
    preset: Literal["small", "medium", "large"] = "medium"
    latent: int = 0  # > 0 overrides the preset's latent size
    layers: int = 0  # > 0 overrides the preset's blocks per latent network
    H_cycles: int = 3
    L_cycles: int = 4
    variant: Literal["two_level", "single"] = "two_level"
    grad_last_only: bool = False
    halting: Literal["none", "act"] = "none"
    max_H_cycles: int = 0  # act: cycles trained and the test-time cap; 0 = H_cycles
    halt_threshold: float = 0.01  # act: stop once the predicted next-cycle gain < this (teacher-cost units)

    def validate(self):
        if self.latent < 0 or self.layers < 0 or self.H_cycles < 1 or self.L_cycles < 1:
            raise ValueError("need latent >= 0, layers >= 0 (0 = from the preset), H_cycles >= 1, L_cycles >= 1")
        if self.max_H_cycles < 0:
            raise ValueError(f"max_H_cycles {self.max_H_cycles} < 0; use 0 (= H_cycles) or a positive cap")
        if self.max_H_cycles and self.halting == "none":
            raise ValueError("max_H_cycles is the cap of adaptive halting; set model.halting=act or max_H_cycles=0")

    @property
    def cycles(self) -> int:
        """H-cycles run in training and by default: max_H_cycles under act (when set), else H_cycles."""
        return (self.max_H_cycles or self.H_cycles) if self.halting == "act" else self.H_cycles

    def size(self) -> tuple[int, int]:
        latent, layers = PRESETS[self.preset]
        return self.latent or latent, self.layers or layers


class Block(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.norm = nn.LayerNorm(d)

    def forward(self, h):
        return self.norm(h + self.mlp(h))


def stack(d: int, layers: int) -> nn.Sequential:
    return nn.Sequential(*[Block(d) for _ in range(layers)])


def reattach(value: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """`value` exactly, differentiated as `start` + a constant: value.detach() + (start - start.detach())
    adds an exact zero, so the forward is unchanged and d/d(start) passes through as the identity."""
    return value.detach() + (start - start.detach())


@dataclass
class TRCOutput:
    controls: list[torch.Tensor]  # H_cycles + 1 sequences (B, T, m): the first guess, then each cycle's
    values: torch.Tensor  # (B, H_cycles + 1): predicted log(1 + cost) of each sequence
    gains: torch.Tensor | None = None  # (B, H_cycles + 1) act: predicted gain of the cycle after each sequence
    cycles: torch.Tensor | None = None  # (B,) cycles each problem used (when called with halt)


@MODELS.register("trc")
class TinyRecursiveController(nn.Module):
    Config = TRCModelConfig

    def __init__(self, cfg: TRCModelConfig, *, n_state: int, n_control: int, horizon: int, dt: float, u_max: float):
        super().__init__()
        self.cfg, self.u_max = cfg, u_max
        self.horizon, self.n_control = horizon, n_control
        d, layers = cfg.size()
        out = horizon * n_control
        # Horizon features: total time and step, so inputs say which horizon the controls span.
        self.register_buffer("horizon_features", torch.tensor([horizon * dt, dt]))
        self.encoder = nn.Sequential(nn.Linear(3 * n_state + 2, d), nn.GELU(), nn.Linear(d, d), nn.LayerNorm(d))
        self.first = nn.Linear(d, out)
        self.embed = nn.Linear(out, d)
        self.refine = nn.Linear(d, out)
        # Start refinement as a small correction, so the untrained recursion does not undo U_0.
        nn.init.zeros_(self.refine.bias)
        self.refine.weight.data.mul_(0.1)
        self.f_L = stack(d, layers)
        two_level = cfg.variant == "two_level"
        self.f_H = stack(d, layers) if two_level else None
        self.z_L0 = nn.Parameter(torch.zeros(d)) if two_level else None  # learned start of z_L
        self.value_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))
        # Only act models carry the halting head, so checkpoints of fixed-H models load unchanged.
        act = cfg.halting == "act"
        self.halt_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1)) if act else None

    def controls(self, V: torch.Tensor) -> torch.Tensor:
        return self.u_max * torch.tanh(V).view(len(V), self.horizon, self.n_control)

    def forward(self, x0: torch.Tensor, target: torch.Tensor, H_cycles: int | None = None, noise: float = 0.0,
                gen: torch.Generator | None = None, halt: float | None = None) -> TRCOutput:
        """x0, target (B, n) -> TRCOutput with H + 1 control sequences and their values. Test-time compute:
        `H_cycles` overrides the trained count (more_cycles); `noise` > 0 adds noise * N(0, 1) from `gen`
        to the pre-tanh controls V after every refinement, so best_of_n draws distinct refinements.
        `halt` (act models): a problem's controls stop changing once its predicted gain < halt."""
        if halt is not None and self.halt_head is None:
            raise ValueError("halt needs a controller trained with model.halting=act")
        feats = torch.cat([x0, target, target - x0, self.horizon_features.expand(len(x0), 2)], dim=-1)
        z_init = self.encoder(feats)
        V = self.first(z_init)
        U = self.controls(V)
        z_H, z_L = z_init, None if self.z_L0 is None else self.z_L0.expand_as(z_init)
        start = (V, z_H, z_L)
        outs, values = [U], [self.value_head(z_init.detach())]
        gains = None if self.halt_head is None else [self.halt_head(z_init.detach())]
        active = torch.ones(len(x0), dtype=torch.bool, device=x0.device)
        used = torch.zeros(len(x0), dtype=torch.long, device=x0.device)
        H = H_cycles or self.cfg.cycles
        for h in range(H):
            if halt is not None:  # once stopped, a problem stays stopped
                active = active & (gains[-1].squeeze(-1) >= halt)
                used += active
            truncated = self.cfg.grad_last_only and h < H - 1
            if self.cfg.grad_last_only and h == H - 1 and H > 1:
                V, z_H, z_L = (None if s is None else reattach(new, s) for new, s in zip((V, z_H, z_L), start))
                U = self.controls(V)
            with torch.no_grad() if truncated else nullcontext():
                u_emb = self.embed(U.flatten(1) / self.u_max)  # U is fixed within a cycle
                for _ in range(self.cfg.L_cycles):
                    if self.f_H is None:
                        z_H = self.f_L(z_H + z_init + u_emb)
                    else:
                        z_L = self.f_L(z_L + z_H + z_init + u_emb)
                if self.f_H is not None:
                    z_H = self.f_H(z_H + z_L)
                V_next = V + self.refine(z_H)
                if noise > 0:
                    V_next = V_next + noise * torch.randn(V.shape, generator=gen, dtype=V.dtype, device=V.device)
                V = V_next if halt is None else torch.where(active[:, None], V_next, V)
                U = self.controls(V)
                outs.append(U)
                values.append(self.value_head(z_H.detach()))
                if gains is not None:
                    gains.append(self.halt_head(z_H.detach()))
        return TRCOutput(outs, torch.cat(values, dim=-1), None if gains is None else torch.cat(gains, dim=-1),
                         None if halt is None else used)
