"""Test-time compute during training (issue 11): reward-weighted loss, hard-example sampling,
best-of-N targets, and the trajectory filter of the `filter` stage.

Shapes: B batch, N candidates, M training states, T time, C fields, X space (1D or 2D).
All states here are normalized (the units the operator trains in); a `Scorer` decodes them to
physical units for the reward, so ARM/PRM/oracle see what they see in the search.

    train.loss_weighting: reward   w_b = clamp(exp(-r_b / T), w_min, w_max) / mean_b(...), r_b the
                                   reward of the prediction given its input (no gradient)
    train.sampling: hard           every R epochs: hardness h_m of each training state from N
                                   candidates; the epoch draws M states with p = softmax(z / T_h),
                                   z = (h - mean h) / std h (z = 0 when all h are equal: uniform)
    train.target: best_of_n        regress toward the best of [deterministic step, N candidates]

Training's ARM uses unit weights: the `arm` section is not part of the train stage's key.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch

from ..rewards import make_reward
from ..sampling import SamplingConfig, perturbation

Scorer = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]  # (B,N,..),(B,..),truth -> (B,N)


@dataclass
class TTCTrainingConfig:
    """The train section's TTC-during-training keys; TrainConfig inherits them (one flat section,
    so they are dotted train.* keys). The defaults are plain training."""

    loss_weighting: Literal["none", "reward"] = "none"
    weight_reward: Literal["arm", "prm"] = "arm"
    # ARM penalties of predictions are relative drifts (~1e-3..1e-1), hence the small default; .inf = plain
    weight_temperature: float = field(default=1.0e-2, metadata={"finite": False})
    weight_min: float = 0.2
    weight_max: float = 5.0
    sampling: Literal["uniform", "hard"] = "uniform"
    hard_refresh_epochs: int = 1
    hard_temperature: float = 1.0  # on standardized hardness
    hard_score: Literal["spread", "arm", "prm"] = "spread"
    target: Literal["truth", "best_of_n"] = "truth"
    target_reward: Literal["oracle", "arm", "prm"] = "oracle"
    n_candidates: int = 8  # N for hard sampling and best_of_n
    candidate_sampler: str = "latent_noise"  # as sampling.sampler (its own key: train's key excludes sampling)
    candidate_sigma: float = 0.02
    candidate_eps: float = 0.005

    def validate_ttc(self):
        if not self.weight_temperature > 0:
            raise ValueError(f"weight_temperature={self.weight_temperature} must be > 0 (.inf = uniform weights)")
        if not 0 < self.weight_min <= 1 <= self.weight_max:
            raise ValueError(f"need 0 < weight_min <= 1 <= weight_max (got {self.weight_min}, {self.weight_max}): "
                             "renormalized weights average 1")
        if self.hard_refresh_epochs < 1 or not self.hard_temperature > 0 or self.n_candidates < 1:
            raise ValueError("need hard_refresh_epochs >= 1, hard_temperature > 0, n_candidates >= 1")
        if "ensemble" in self.sampling_config().parts:
            raise ValueError("candidate_sampler: ensemble needs trained members; use latent_noise, input_perturb "
                             "or mc_dropout")
        self.sampling_config().validate()

    def sampling_config(self) -> SamplingConfig:
        return SamplingConfig(sampler=self.candidate_sampler, latent_sigma=self.candidate_sigma,
                              input_eps=self.candidate_eps)

    def rewards(self) -> set[str]:
        """Reward names this config scores with (the stage builds one Scorer each)."""
        used = set()
        if self.loss_weighting == "reward":
            used.add(self.weight_reward)
        if self.sampling == "hard" and self.hard_score != "spread":
            used.add(self.hard_score)
        if self.target == "best_of_n":
            used.add(self.target_reward)
        return used


@dataclass
class FilterConfig:
    """Stage `filter`: keep the train ICs whose rollouts score best (or worst) by `reward`."""

    reward: Literal["arm", "prm", "oracle"] = "arm"
    keep_fraction: float = 0.5  # of the train ICs; ignored when threshold is set
    threshold: float | None = None  # keep trajectories scoring >= threshold (keep: best) or <= (worst)
    keep: Literal["best", "worst"] = "best"
    # round r > 1 trains an operator on round r-1's file and filters the train ICs again with it
    rounds: int = 1

    def validate(self):
        if not 0 < self.keep_fraction <= 1:
            raise ValueError(f"keep_fraction={self.keep_fraction} must be in (0, 1]")
        if self.rounds < 1:
            raise ValueError(f"rounds={self.rounds} must be >= 1")


def make_scorer(name: str, problem, normalizer, prm_path=None, device="cpu") -> Scorer:
    """A reward (arm | prm | oracle) on normalized states: decodes candidates (B, N, C, *X), prev
    (B, C, *X) and truth to physical units and returns the reward's (B, N) scores."""
    reward = make_reward(name, problem=problem, prm_path=prm_path, device=device)
    ndim = problem.ndim

    @torch.no_grad()
    def score(cands, prev, truth=None):
        phys = normalizer.decode(cands.flatten(0, 1), ndim).view(cands.shape)
        true = None if truth is None else normalizer.decode(truth, ndim)
        return reward.score(phys, normalizer.decode(prev, ndim), true)

    return score


def reward_weights(r: torch.Tensor, temperature: float, w_min: float, w_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """r (B,) rewards, higher is better -> (w (B,), clipped (B,) bool) with
        w_b = c_b / mean(c),  c_b = clamp(exp(-r_b / T), w_min, w_max),
    clamped in log space (no overflow). T = inf gives c = 1, hence w = 1 exactly."""
    raw = -r / temperature
    lo, hi = math.log(w_min), math.log(w_max)
    c = raw.clamp(lo, hi).exp()
    return c / c.mean(), (raw < lo) | (raw > hi)


def hardness(cands: torch.Tensor, prev: torch.Tensor, scorer: Scorer | None) -> torch.Tensor:
    """cands (M, N, C, *X), prev (M, C, *X) -> (M,): the candidates' spread mean_{n,c,x}(c - mean_n c)^2
    when scorer is None, else minus their mean reward (a low reward is a hard state)."""
    if scorer is None:
        return (cands - cands.mean(1, keepdim=True)).pow(2).flatten(1).mean(1)
    return -scorer(cands, prev, None).mean(1)


def hard_probabilities(h: torch.Tensor, temperature: float) -> torch.Tensor:
    """h (M,) -> p (M,) = softmax(z / T), z the standardized hardness; equal h give p = 1/M exactly."""
    std = h.std() if h.numel() > 1 else h.new_zeros(())
    z = torch.zeros_like(h) if not std > 0 else (h - h.mean()) / std
    return torch.softmax(z / temperature, 0)


def best_of_n(pred: torch.Tensor, cands: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """pred (B, C, *X), cands (B, N, C, *X), scores (B, N + 1) of [pred, cands] -> (target (B, C, *X),
    pick (B,) index, 0 = the deterministic step). Keeping the step as candidate 0 means an oracle pick
    is never farther from the truth than the prediction itself."""
    pool = torch.cat([pred.unsqueeze(1), cands], 1)
    pick = scores.argmax(1)
    return pool[torch.arange(len(pool)), pick], pick


class TrainingTTC:
    """The hooks `loop.train` calls: `order(model, epoch)` (hard sampling) and `loss(...)` (weights
    and best-of-N targets around the registered loss). Each uses its own seeded generator, so the
    global RNG, and with it plain training, is untouched."""

    def __init__(self, cfg, scorers: dict[str, Scorer], seed: int, log: Callable[[dict, int], None]):
        missing = cfg.rewards() - set(scorers)
        if missing:
            raise ValueError(f"train: no scorer for reward {sorted(missing)[0]!r}")
        self.cfg, self.scorers, self.seed, self.log = cfg, scorers, seed, log
        self.perturbation = perturbation(cfg.sampling_config())
        self.gen: torch.Generator | None = None  # best-of-N candidates; made on the batches' device
        self.probs: torch.Tensor | None = None

    def _candidates(self, model, u: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return model.sample_next(u, self.cfg.n_candidates, self.perturbation, gen)

    @torch.no_grad()
    def order(self, model, inputs: torch.Tensor, epoch: int, device, step: int) -> torch.Tensor:
        """(M,) indices of the epoch's training states drawn with replacement by hardness."""
        cfg = self.cfg
        if self.probs is None or epoch % cfg.hard_refresh_epochs == 0:
            start, was_training = time.perf_counter(), model.training
            model.eval()
            gen = torch.Generator(device=device).manual_seed(self.seed * 100_003 + epoch)
            scorer = None if cfg.hard_score == "spread" else self.scorers[cfg.hard_score]
            h = torch.cat([hardness(self._candidates(model, u, gen), u, scorer)
                           for u in (c.to(device) for c in inputs.split(cfg.batch_size))]).cpu()
            model.train(was_training)
            self.probs = hard_probabilities(h, cfg.hard_temperature)
            self.log({"train/hard/mean": float(h.mean()), "train/hard/std": float(h.std()),
                      "train/hard/max": float(h.max()), "train/hard/p_max_x_m": float(self.probs.max() * len(h)),
                      "train/hard/refresh_s": time.perf_counter() - start}, step)
        draw = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.multinomial(self.probs, len(self.probs), replacement=True, generator=draw)

    def loss(self, loss_fn, model, batch: dict) -> dict:
        """The registered loss on a batch with per-sample weights and/or best-of-N targets added;
        -> its terms plus train/<diagnostics> (weights, target errors, extra seconds per step)."""
        cfg, extra, start = self.cfg, {}, time.perf_counter()
        if cfg.target == "best_of_n" or cfg.loss_weighting == "reward":
            batch = dict(batch)
            model.eval()
            with torch.no_grad():
                u0, truth = batch["u0"], batch["targets"][:, 0]
                pred = model(u0)
                if cfg.target == "best_of_n":
                    if self.gen is None:
                        self.gen = torch.Generator(device=u0.device).manual_seed(self.seed * 7_919 + 1)
                    cands = self._candidates(model, u0, self.gen)
                    scores = self.scorers[cfg.target_reward](torch.cat([pred.unsqueeze(1), cands], 1), u0, truth)
                    target, pick = best_of_n(pred, cands, scores)
                    batch["targets"] = target.unsqueeze(1)
                    extra |= {"target_reward": scores.gather(1, pick[:, None]).mean(),
                              "target_true_mse": (target - truth).pow(2).mean(), "pred_true_mse": (pred - truth).pow(2).mean(),
                              "target_is_pred": (pick == 0).float().mean()}
                if cfg.loss_weighting == "reward":
                    r = self.scorers[cfg.weight_reward](pred.unsqueeze(1), u0, None)[:, 0]
                    w, clipped = reward_weights(r, cfg.weight_temperature, cfg.weight_min, cfg.weight_max)
                    batch["weight"] = w
                    extra |= {"weight_mean": w.mean(), "weight_std": w.std() if len(w) > 1 else w.new_zeros(()),
                              "weight_max": w.max(), "weight_clipped": clipped.float().mean()}
            model.train()
            extra["ttc_s"] = torch.tensor(time.perf_counter() - start)
        terms = loss_fn(model, batch, cfg)
        return {**(terms if isinstance(terms, dict) else {"loss": terms}), **extra}


def trajectory_scores(pred: torch.Tensor, truth: torch.Tensor, scorer: Scorer, oracle: bool) -> torch.Tensor:
    """pred, truth (B, T, C, *X) normalized rollouts from the same ICs -> (B,) trajectory score:
    the mean over steps t of reward(pred_{t+1} | pred_t); for the oracle, -mean_t MSE(pred_t, truth_t)."""
    if oracle:
        return -(pred[:, 1:] - truth[:, 1:]).pow(2).flatten(1).mean(1)
    B, T = pred.shape[:2]
    steps = [scorer(pred[:, t + 1].unsqueeze(1), pred[:, t], None)[:, 0] for t in range(T - 1)]
    return torch.stack(steps, 1).mean(1)


def keep_mask(scores: torch.Tensor, cfg: FilterConfig) -> torch.Tensor:
    """scores (B,) -> (B,) bool: the round(keep_fraction * B) (at least 1) best (or worst) by score,
    ties broken by index; with a threshold, every score on the kept side of it."""
    sign = 1.0 if cfg.keep == "best" else -1.0
    if cfg.threshold is not None:
        return sign * scores >= sign * cfg.threshold
    n = max(1, int(round(cfg.keep_fraction * len(scores))))
    order = torch.argsort(-sign * scores, stable=True)
    mask = torch.zeros(len(scores), dtype=torch.bool)
    mask[order[:n]] = True
    return mask
