"""Training losses, one registry per kind of model (each kind's batches carry different tensors).
A loss is one registered function

    loss(model, batch: dict[str, Tensor], cfg, problem=None) -> Tensor | dict[str, Tensor]

returning the scalar objective, or named terms with the objective under "loss" (each term is logged
as train/<name>). `cfg` is the config section being trained (train, prm or trc); `problem` is the
problem when the loss needs its physics (the controller's dynamics), else None.

    OPERATOR_LOSSES    batch u0 (B, C, *X), targets (B, K, C, *X)      chosen by train.loss
                       (unrolled_mse; upt_inverse: + UPT's inverse losses, latent operators)
    PRM_LOSSES         batch state, cands (S, n, ...), triplet (S, 3), truth[, anchor]
    CONTROLLER_LOSSES  batch x0, target, controls, teacher_cost        chosen by trc.method (bc | ps)

Adding a loss is one more registered function here, then e.g. `--set train.loss=huber`:

    @OPERATOR_LOSSES.register("huber")
    def huber(model, batch, cfg, problem=None):
        return torch.nn.functional.huber_loss(model(batch["u0"]), batch["targets"][:, 0])
"""

from __future__ import annotations

import torch

from ..errors import UserError
from ..registry import Registry
from .queries import gather_cells, sample_queries

OPERATOR_LOSSES: Registry = Registry("operator loss")
PRM_LOSSES: Registry = Registry("PRM loss")
CONTROLLER_LOSSES: Registry = Registry("controller loss")


@OPERATOR_LOSSES.register("unrolled_mse")
def unrolled_mse(model, batch: dict, cfg=None, problem=None) -> torch.Tensor:
    """batch u0 (B, C, *X), targets (B, K, C, *X) -> mean over K autoregressive steps of
    MSE(model^k(u0), u_k). K = 1 is the one-step loss; K > 1 trains on the model's own rollouts.
    An optional batch["weight"] (B,) of mean 1 weights each sample's squared error (train.loss_weighting);
    all-ones weights give the unweighted loss bit for bit (x * 1.0 == x)."""
    u, targets, total = batch["u0"], batch["targets"], 0.0
    w = batch.get("weight")
    w = None if w is None else w.view(-1, *[1] * (u.ndim - 1))
    for k in range(targets.shape[1]):
        u = model(u)
        err = (u - targets[:, k]) ** 2
        total = total + torch.mean(err if w is None else w * err)
    return total / targets.shape[1]


class LossError(UserError):
    """A loss asked of a model that lacks what it needs."""


def inverse_weight(lam: float, epoch: int, warmup: int, max_weight: float) -> float:
    """The curriculum weight of an inverse loss at 0-based `epoch`:

        w(e) = 0                                      e < W
             = min(lam * min((e - W + 1) / W, 1), cap)  e >= W      (W = warmup; W = 0: min(lam, cap))

    zero for W epochs, then a linear ramp reaching lam at epoch 2W - 1, never above cap."""
    if warmup == 0:
        return min(lam, max_weight)
    if epoch < warmup:
        return 0.0
    return min(lam * min((epoch - warmup + 1) / warmup, 1.0), max_weight)


@OPERATOR_LOSSES.register("upt_inverse")
def upt_inverse(model, batch: dict, cfg, problem=None) -> dict[str, torch.Tensor]:
    """UPT's forward loss plus its inverse encoding/decoding losses (Alkin et al. 2024), for a latent
    operator whose decode(z, u) reads only u's grid (`absolute_decode`: UPT, not FNO's residual decode). batch u0 (B, C, *X), targets (B, K, C, *X)[, epoch, batch_index]:

        L_forward = mean_k MSE(D(A^k(E(u0)))(q), u_k(q))  K latent steps (train.unroll), at the cells q
        L_inv_enc = MSE(D(E(u0))(q), u0(q))            the decoder inverts the encoder on the input
        L_inv_dec = MSE(E(D(z1)), sg(z1)), z1 = A(E(u0))  the encoder inverts the decoder on the prediction
        loss      = L_forward + w_enc L_inv_enc + w_dec L_inv_dec

    w = inverse_weight(lambda, epoch, ...) on batches whose index is a multiple of
    train.inverse_frequency, else 0. With weight 0 (and without "epoch" in the batch: validation scores
    the forward loss alone, comparable across epochs) the inverse terms are still computed for the
    log, without gradient. Unlike the official code (ml-jku/UPT: the previous frame reconstructed from
    the detached latent, weight 1 throughout) the encoder's latent is not detached, so L_inv_enc
    trains encoder and decoder together, and the weights follow the curriculum above.
    q is every cell, or with train.query_sampling.enabled (training batches only; validation decodes
    densely) a fresh sample of num_queries cells per batch (queries.py). L_inv_dec takes no query
    sampling: the encoder reads a full grid. inv_weight logs the larger of w_enc, w_dec."""
    if not model.absolute_decode:  # FNO's decode is u + P(h): D(E(u)) = u would be trivial
        raise LossError(f"train.loss=upt_inverse needs an operator that decodes fields from its latent alone "
                        f"(model.type=upt), not {type(model).__name__}; set model.type=upt or train.loss=unrolled_mse")
    u0, targets = batch["u0"], batch["targets"]
    training = "epoch" in batch
    decode, at = _decoder(model, u0, cfg.query_sampling if training else None)
    z0 = model.encode(u0)
    z, forward = z0, 0.0
    for k in range(targets.shape[1]):
        z = model.step(z)
        z1 = z if k == 0 else z1
        forward = forward + torch.mean((decode(z) - at(targets[:, k])) ** 2)
    training = training and batch.get("batch_index", 0) % cfg.inverse_frequency == 0
    w = {name: inverse_weight(lam, batch["epoch"], cfg.inverse_warmup_epochs, cfg.inverse_max_weight)
         if training else 0.0 for name, lam in (("enc", cfg.lambda_inv_enc), ("dec", cfg.lambda_inv_dec))}
    with torch.enable_grad() if w["enc"] > 0 else torch.no_grad():
        inv_enc = torch.mean((decode(z0) - at(u0)) ** 2)
    with torch.enable_grad() if w["dec"] > 0 else torch.no_grad():
        inv_dec = torch.mean((model.encode(model.decode(z1, u0)) - z1.detach()) ** 2)
    forward = forward / targets.shape[1]
    return {"loss": forward + w["enc"] * inv_enc + w["dec"] * inv_dec, "L_forward": forward,
            "L_inv_enc": inv_enc, "L_inv_dec": inv_dec,
            "inv_weight": torch.tensor(max(w.values()))}


def _decoder(model, u0: torch.Tensor, qs):
    """-> (decode z -> fields, at u -> the same points of a true field): dense on u0's grid, or at
    train.query_sampling's cells (drawn once per batch, shared by every step and L_inv_enc)."""
    if qs is None or not qs.enabled:
        return (lambda z: model.decode(z, u0)), (lambda u: u)
    if not hasattr(model, "decode_cells"):
        raise LossError(f"train.query_sampling needs an any-point decoder (model.type=upt), not "
                        f"{type(model).__name__}; set train.query_sampling.enabled=false")
    idx = sample_queries(qs, u0.shape[0], u0[0, 0].numel(), u0.device)
    return (lambda z: model.decode_cells(z, u0, idx)), (lambda u: gather_cells(u, idx))


def triplet_margin_loss(scores: torch.Tensor, margin: float) -> torch.Tensor:
    """scores (M, 3) of (best, median, worst) candidates -> scalar mean hinge loss
        L = mean_m [ relu(margin - (s_best - s_median)) + relu(margin - (s_median - s_worst)) ],
    zero exactly when s_best >= s_median + margin and s_median >= s_worst + margin for every row."""
    if scores.ndim != 2 or scores.shape[1] != 3:
        raise ValueError(f"triplet scores must be (M, 3) ordered (best, median, worst), got {tuple(scores.shape)}")
    gaps = scores[:, :2] - scores[:, 1:]  # (s_b - s_m, s_m - s_w)
    return torch.relu(margin - gaps).sum(1).mean()


def bradley_terry_loss(scores: torch.Tensor) -> torch.Tensor:
    """scores (M, 3) of (best, median, worst) -> scalar pairwise logistic (Bradley-Terry) loss over
    the three ordered pairs i better than j, P(i beats j) = sigmoid(s_i - s_j):
        L = mean_m (1/3) sum_{(i, j) in {(b, m), (m, w), (b, w)}} softplus(-(s_i - s_j)),
    i.e. the mean negative log-likelihood of the observed order; no margin, never exactly zero."""
    if scores.ndim != 2 or scores.shape[1] != 3:
        raise ValueError(f"triplet scores must be (M, 3) ordered (best, median, worst), got {tuple(scores.shape)}")
    gaps = torch.stack([scores[:, 0] - scores[:, 1], scores[:, 1] - scores[:, 2], scores[:, 0] - scores[:, 2]], 1)
    return torch.nn.functional.softplus(-gaps).mean()


def prm_objective(ranking_loss):
    """A PRM loss from a ranking loss on the (M, 3) triplet scores: batch state (S, C, *X), cands
    (S, n, C, *X) the set scored together, triplet (S, 3) positions of its best/median/worst, truth
    (S, C, *X)[, anchor]. For the reference head plus ref_weight times the MSE of the reference r to
    the true next state, in units of the candidate spread sigma (so the terms have comparable scales)."""
    def loss_fn(model, batch: dict, cfg, problem=None) -> torch.Tensor:
        scores, ref = model.score(batch["state"], batch["cands"], batch.get("anchor"))
        loss = ranking_loss(scores.gather(1, batch["triplet"]), cfg)
        if ref is not None and cfg.ref_weight > 0:
            miss = (ref - batch["truth"]) / model.per_channel(model.dev_scale)
            loss = loss + cfg.ref_weight * miss.square().mean()
        return loss
    return loss_fn


PRM_LOSSES.register("triplet")(prm_objective(lambda scores, cfg: triplet_margin_loss(scores, cfg.margin)))
PRM_LOSSES.register("bradley_terry")(prm_objective(lambda scores, cfg: bradley_terry_loss(scores)))


def bc_loss(final: torch.Tensor, teacher: torch.Tensor, u_max: float) -> torch.Tensor:
    """final, teacher (B, T, m) -> scalar MSE of the controls in units of the bound (so in [0, 4])."""
    return torch.mean(((final - teacher) / u_max) ** 2)


def iterate_costs(problem, x0: torch.Tensor, target: torch.Tensor, controls: list[torch.Tensor]) -> torch.Tensor:
    """The cost of every control sequence, rolled out through the differentiable dynamics in one
    batch: x0, target (B, n), K+1 sequences (B, T, m) -> costs (B, K+1)."""
    K1 = len(controls)
    U = torch.cat(controls, dim=0)
    x, g = x0.repeat(K1, 1), target.repeat(K1, 1)
    return problem.cost(problem.rollout(x, U), U, g).view(K1, len(x0)).T


def process_loss(costs: torch.Tensor, scale: torch.Tensor, floor: torch.Tensor | None = None) -> torch.Tensor:
    """costs (B, K+1) >= 0; scale: a positive scalar or (B,) that must not depend on the model
    (e.g. the teacher's costs) -> scalar

        P = mean_b [ c_0 + sum_{k>=1} ( c_k + relu(c_k - c_{k-1}) ) ] / ((K+1) s).

    Every iterate's cost counts and every refinement step that makes the cost go up is penalized
    once more, so improvements c_{k-1} -> c_k are rewarded. The earlier system normalized by the
    model's own c_0, so making the first guess worse lowered its loss. Here the scale comes from
    the data, and the coefficient of each c_k is >= 0 wherever the loss is differentiable (c_0:
    1 - [c_1 > c_0]; c_k: 1 + [c_k > c_{k-1}] - [c_{k+1} > c_k]), so P is non-decreasing in c_0: a
    worse first guess never lowers it. With `floor` (B,) (trc.process_floor: teacher) every c_k is first
    replaced by its excess relu(c_k - floor_b), so the term stops paying once at the teacher's cost."""
    if floor is not None:
        costs = torch.relu(costs - floor.detach()[:, None])
    K1 = costs.shape[1]
    steps = costs[:, 1:] + torch.relu(costs[:, 1:] - costs[:, :-1])
    total = costs[:, 0] + steps.sum(1)
    return torch.mean(total / (K1 * scale.detach()))


def value_loss(values: torch.Tensor, costs: torch.Tensor) -> torch.Tensor:
    """values, costs (B, K+1) -> MSE between predicted and realized log(1 + cost). Costs are
    detached: the value head learns to predict the cost, it does not steer the controls. The log
    keeps the bad first guesses of early training from dominating."""
    return torch.mean((values - torch.log1p(costs.detach())) ** 2)


def halt_loss(gains: torch.Tensor, costs: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """gains (B, K+1) predicted after each iterate, costs (B, K+1), scale a data-only positive scalar s ->
    MSE of gains[:, k] to the realized gain of the next cycle, log(1 + c_k/s) - log(1 + c_{k+1}/s) for
    k < K (the last iterate has no next cycle). A Q-style target from the differentiable simulation,
    detached: the halting head learns when refinement pays, it does not steer the controls. Near the
    teacher's cost it is (c_k - c_{k+1}) / s; the log keeps early training's huge gains bounded (as raw
    differences they made this term ~1e3, whose gradient then took the whole clipping budget)."""
    log_cost = torch.log1p(costs.detach() / scale)
    realized = log_cost[:, :-1] - log_cost[:, 1:]
    return torch.mean((gains[:, :-1] - realized.detach()) ** 2)


def _controller_terms(model, batch: dict, cfg, problem, process: bool) -> dict[str, torch.Tensor]:
    """batch x0, target (B, n), controls (B, T, m) the teacher's, teacher_cost (B,) -> {"loss":
    bc_weight * bc + process_weight * process + value_weight * value + halt_weight * halt, and each term}
    (halt only for act controllers, whose outputs carry gains)."""
    out = model(batch["x0"], batch["target"])
    terms = {"bc": bc_loss(out.controls[-1], batch["controls"], problem.cfg.u_max)}
    halting = out.gains is not None and cfg.halt_weight > 0
    if process or cfg.value_weight > 0 or halting:
        with torch.enable_grad() if process else torch.no_grad():
            costs = iterate_costs(problem, batch["x0"], batch["target"], out.controls)
        if process:
            floor = batch["teacher_cost"] if cfg.process_floor == "teacher" else None
            terms["process"] = process_loss(costs, batch["teacher_cost"].mean(), floor)
        if cfg.value_weight > 0:
            terms["value"] = value_loss(out.values, costs)
        if halting:
            terms["halt"] = halt_loss(out.gains, costs, batch["teacher_cost"].mean())
    weights = {"bc": cfg.bc_weight, "process": cfg.process_weight, "value": cfg.value_weight,
               "halt": cfg.halt_weight}
    return {"loss": sum(weights[k] * v for k, v in terms.items()), **terms}


@CONTROLLER_LOSSES.register("bc")
def behaviour_cloning(model, batch: dict, cfg, problem) -> dict[str, torch.Tensor]:
    """Behaviour cloning of the teacher's controls (plus the value probe)."""
    return _controller_terms(model, batch, cfg, problem, process=False)


@CONTROLLER_LOSSES.register("ps")
def process_supervision(model, batch: dict, cfg, problem) -> dict[str, torch.Tensor]:
    """Behaviour cloning plus process supervision of every iterate's cost (plus the value probe)."""
    return _controller_terms(model, batch, cfg, problem, process=True)
