"""The parts of one search step, composed in this order by `ttc.search.search`:

    propose -> correct -> guard -> score -> fall back -> keep -> record -> carry

They work on rows: one row per (IC, kept trajectory), R = B * K rows of N candidates each. States
are normalized between steps (like the plain rollout); rewards and the corrector see physical
units. In a latent rollout (ttc.rollout=latent) each row also carries its latent z, which
`propose` steps and `carry` hands on; physical rollouts carry None. A new candidate source is a new `propose`, a new corrector a new `Corrector`, a new way to
keep states a new keep function chosen by the reward's `aggregate` capability (rewards/__init__.py).
"""

from __future__ import annotations

import torch

from .. import sampling


def deterministic(model, x: torch.Tensor, z: torch.Tensor | None):
    """The operator's own step of rows x (R, C, *X): ((R, 1, C, *X), None), or in a latent rollout from
    their latents z (R, *L): (D(A(z)) (R, 1, C, *X), A(z) (R, 1, *L))."""
    if z is None:
        return model(x).unsqueeze(1), None
    z = model.step(z)
    return model.decode(z, x).unsqueeze(1), z.unsqueeze(1)


def propose(model, x: torch.Tensor, z: torch.Tensor | None, n: int, reward, sampling_cfg, generator):
    """Kept states x (R, C, *X) [latents z (R, *L)] -> (candidates (R, N, C, *X) normalized, their
    latents (R, N, *L) or None); one batched pass. Physical (z None): the operator reads the fields;
    latent: it steps z (ttc/rollout.py). A deterministic selector (the baseline) proposes the
    operator's own step, N = 1."""
    if reward.deterministic:
        return deterministic(model, x, z)
    if z is None:
        return sampling.candidates(model, x, n, sampling_cfg, generator), None
    z_next, cand = sampling.latent_candidates(model, z, x, n, sampling_cfg, generator)
    return cand, z_next


def carry(model, correct, kept: torch.Tensor, x: torch.Tensor, cand_z: torch.Tensor | None,
          slot: torch.Tensor | None, valid: torch.Tensor):
    """-> (kept states (B, K, C, *X), their latents rows (B*K, *L) or None in a physical rollout).
    A latent rollout never re-encodes (that would make it a physical one): the kept candidates carry
    their own latents (cand_z (R, N, *L) at `slot` (B, K) of each IC's K*N), so a projected state's
    latent is its unprojected candidate's (the projection corrects what rewards and metrics see); an
    ensemble mean (slot None, K = 1) is the mean of the valid candidates' latents, decoded (and
    corrected like a candidate)."""
    if cand_z is None:
        return kept, None
    if slot is None:
        w = valid.to(cand_z.dtype).view(*valid.shape, *[1] * (cand_z.ndim - 2))
        z = (cand_z * w).sum(1) / w.sum(1).clamp_min(1.0)
        mean, _ = correct(model.decode(z, x).unsqueeze(1), torch.arange(len(z), device=z.device))
        return mean.view(kept.shape), z
    b = kept.shape[0]
    return kept, take(cand_z.reshape(b, -1, *cand_z.shape[2:]), slot).flatten(0, 1)


class Corrector:
    """Normalized candidates (R, N, C, *X) of ICs `ic` (R,) -> (normalized, physical). With the
    ICs' conserved totals it projects every candidate onto them (problem.project_conserved), so the
    reward sees and the search keeps the projected states; `counts` accumulates the problem's
    per-state "projected" / "partial" / "refused" counts (a positivity-safe projection may apply
    only part of the correction, or none)."""

    def __init__(self, problem, normalizer, totals: dict[str, torch.Tensor] | None = None):
        self.problem, self.normalizer, self.totals = problem, normalizer, totals
        self.counts: dict[str, int] = {}

    def __call__(self, cand_n: torch.Tensor, ic: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nd = self.problem.ndim
        cand = self.normalizer.decode(cand_n, nd)
        if self.totals is None:
            return cand_n, cand
        target = {q: v[ic].unsqueeze(1) for q, v in self.totals.items()}
        cand = self.problem.project_conserved(cand, target, counts=self.counts)
        return self.normalizer.encode(cand, nd), cand


def finite(cand: torch.Tensor) -> torch.Tensor:
    """(R, N) True where the candidate is finite everywhere: NaN/Inf candidates are never kept."""
    return torch.isfinite(cand).flatten(2).all(dim=2)


def score(reward, cand, prev, truth, valid) -> tuple[torch.Tensor, dict | None, torch.Tensor]:
    """-> (scores (R, N) with -inf where invalid, the reward's terms, valid & finite score).
    Only a reward that declares `needs_truth` (the oracle) is shown the true next state."""
    scores, terms = reward.score_terms(torch.nan_to_num(cand), prev, truth if reward.needs_truth else None)
    valid = valid & torch.isfinite(scores)
    return torch.where(valid, scores, torch.full_like(scores, -torch.inf)), terms, valid


def guard(scores: torch.Tensor | None, valid: torch.Tensor, reward) -> torch.Tensor:
    """(R,) rows that fall back to the deterministic step: no valid candidate, or (N > 1, a reward
    that abstains) valid scores within the reward's tolerance of each other, where the reward
    carries no information."""
    none_valid = ~valid.any(dim=1)
    if scores is None or scores.shape[1] == 1 or not reward.abstains:
        return none_valid
    spread = (torch.where(valid, scores, -torch.inf).amax(1) - torch.where(valid, scores, torch.inf).amin(1))
    return none_valid | (spread <= reward.tolerance)


def neutral(scores: torch.Tensor, valid: torch.Tensor, ic: torch.Tensor, b: int) -> torch.Tensor:
    """(R,) the step score a fallback row carries. Not 0, which is the best possible ARM, PRM and
    oracle score and made beam search prefer fallback branches. With V_r the valid slots of row r:
        tied row (V_r not empty):  s_r = mean_{j in V_r} score_rj   (the tie value: what the reward
                                   said of every candidate, so the path keeps its true score)
        no valid candidate:        s_r = mean over the valid slots of every row of r's IC,
                                   0 when there are none (all rows of the IC fall back alike, and a
                                   common constant cannot reorder them)."""
    s = torch.where(valid, scores, torch.zeros_like(scores)).sum(1)
    count = valid.sum(1).to(scores.dtype)
    ic_s = scores.new_zeros(b).index_add(0, ic, s)[ic]
    ic_count = scores.new_zeros(b).index_add(0, ic, count)[ic]
    return torch.where(count > 0, s / count.clamp_min(1), ic_s / ic_count.clamp_min(1))


def fall_back(model, correct, x, z, ic, rows, cand_n, cand_z, valid, scores, b):
    """Replace the candidates of fallback `rows` by the deterministic step (corrected like the
    candidates; its latent too in a latent rollout) in slot 0, the only valid slot of the row, scored
    `neutral` (-inf elsewhere): it competes in the beam as one candidate, not as N copies.
    -> (cand_n, cand_z, valid, scores)."""
    det, det_z = deterministic(model, x[rows], None if z is None else z[rows])
    det_n, _ = correct(det, ic[rows])
    if det_z is not None:
        cand_z = cand_z.clone()
        cand_z[rows, 0] = det_z[:, 0]
    if scores is not None:
        fill = neutral(scores, valid, ic, b)[rows]
        scores = scores.clone()
        scores[rows] = -torch.inf
        scores[rows, 0] = fill
    cand_n, valid = cand_n.clone(), valid.clone()
    cand_n[rows, 0] = det_n[:, 0]
    valid[rows] = False
    valid[rows, 0] = True
    return cand_n, cand_z, valid, scores


def take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, M, ...), idx (B, K) -> (B, K, ...)."""
    return x.gather(1, idx.view(*idx.shape, *[1] * (x.ndim - 2)).expand(*idx.shape, *x.shape[2:]))


def keep_mean(cand_n, valid, scores, cum, b, k):
    """aggregate="mean" (ensemble; the baseline's single candidate is its own mean, exactly): one
    kept state per IC, the mean of its valid candidates. -> (kept (B, 1, ...), parent, cum, slot):
    slot 0 when N = 1 (the kept state is that candidate), else None (a mean is no candidate)."""
    w = valid.to(cand_n.dtype).view(*valid.shape, *[1] * (cand_n.ndim - 2))
    mean = (torch.nan_to_num(cand_n) * w).sum(1) / w.sum(1).clamp_min(1.0)
    zeros = torch.zeros(b, 1, dtype=torch.long, device=cand_n.device)
    return mean.view(b, 1, *mean.shape[1:]), zeros, cum, zeros if cand_n.shape[1] == 1 else None


def keep_top(cand_n, valid, scores, cum, b, k):
    """Per IC the k candidates of best cumulative score over all its rows (k = 1: greedy).
    topk sorts descending, so kept state 0 is always the IC's best (finite: a fallback row has a
    valid slot). When fewer than k are valid the beam repeats its best instead of keeping -inf
    (invalid) states: the copies explore it with fresh noise. -> (kept, parent row, cum, slot: the
    kept candidates' positions among each IC's rows x N)."""
    kc, n = cum.shape[1], cand_n.shape[1]
    total = (cum.reshape(-1, 1) + scores).view(b, kc * n)
    top = total.topk(min(k, kc * n), dim=1)
    dead = top.values == -torch.inf
    idx = torch.where(dead, top.indices[:, :1], top.indices)
    kept = take(cand_n.view(b, kc * n, *cand_n.shape[2:]), idx)
    return kept, idx // n, torch.where(dead, top.values[:, :1], top.values), idx


KEEP = {"mean": keep_mean, None: keep_top}


def backtrack(frames: list[torch.Tensor], parents: list[torch.Tensor]) -> torch.Tensor:
    """frames[t] (B, Kt, ...) kept after step t, parents[t] (B, Kt+1) the frame-t row each
    survivor extends -> the best trajectory (B, T+1, ...): kept row 0 at the end, followed back.
    Backtracking once avoids copying histories every step."""
    idx = torch.zeros(frames[0].shape[0], 1, dtype=torch.long, device=frames[0].device)
    best = [frames[0][:, 0]] + [None] * (len(frames) - 1)
    for t in range(len(frames) - 1, 0, -1):
        best[t] = take(frames[t], idx)[:, 0]
        idx = parents[t - 1].gather(1, idx)
    return torch.stack(best, dim=1)


def record(out, scores, cand, truth, valid, terms) -> None:
    """Diagnostics of one scored step: the scores and the candidates' true MSE of fully valid rows
    (rank metrics), and per reward term its value at the pick and its candidate mean.
    Everything stays on the search's device (no per-step host sync: a boolean index or float() would
    wait for the device); `finish` filters and moves it once, after the last step."""
    errors = ((cand - truth.unsqueeze(1)) ** 2).flatten(2).mean(dim=2)
    out.scores.append((scores, valid.all(dim=1)))
    out.errors.append(errors)
    if terms is None:
        return
    pick = scores.argmax(dim=1, keepdim=True)
    for name, value in terms.items():
        acc = out.terms.setdefault(name, [0.0, 0.0, 0])
        acc[0] = acc[0] + value.gather(1, pick).mean()
        acc[1] = acc[1] + value.mean()
        acc[2] += 1


def finish(out) -> None:
    """After the last step: `record`'s device tensors -> per step CPU (rows, N) scores, errors and
    look-ahead errors of the fully valid rows, reward terms and counters as Python numbers."""
    full = [f for _, f in out.scores]
    out.errors, out.ahead = ([e[f].cpu() for e, f in zip(errs, full)] for errs in (out.errors, out.ahead))
    out.scores = [sc[f].cpu() for (sc, _), f in zip(out.scores, full)]
    out.terms = {name: [float(chosen), float(mean), count] for name, (chosen, mean, count) in out.terms.items()}
    out.model_evals, out.fallbacks = int(out.model_evals), int(out.fallbacks)
