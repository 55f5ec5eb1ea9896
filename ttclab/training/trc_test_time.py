"""Test-time compute for the tiny recursive controller, with the same honest controls as the PDE side.

best_of_n draws N refinements of each problem's control sequence: candidate 0 is the plain
(noise-free) controller, candidates 1..N-1 add noise * N(0, 1) to the pre-tanh controls after every
H-cycle. A verifier picks one per problem:
    value   the value head's prediction for the last iterate (what is deployable: no simulator)
    oracle  the true simulated cost (the dynamics are known here; the ceiling of any verifier)
    random  a uniform pick (the control: what N draws give without a verifier)
Keeping the plain controller as candidate 0 makes N=1 the plain controller and the oracle pick never
costlier than it on the true cost, per problem, by construction. Compute is counted in H-cycles:
N * H per problem (plus N first guesses), against H for the plain controller.

Adaptive halting (model.halting: act) is read the same way: the halting controller next to the same
controller run for all its cycles, with the cycles each problem used counted.
"""

from __future__ import annotations

import torch

from ..metrics.control import cost_gap_pct

VERIFIERS = ("value", "oracle", "random")


@torch.no_grad()
def best_of_n(model, problem, x0: torch.Tensor, target: torch.Tensor, n: int, noise: float, verifier: str,
              gen: torch.Generator, H_cycles: int | None = None) -> dict:
    """x0, target (B, n_state) -> controls (B, T, m) float64 of the picked candidate, pick (B,) index,
    cost (N, B) true cost of every candidate, cycles (H-cycles spent per problem)."""
    if n < 1 or noise < 0 or verifier not in VERIFIERS:
        raise ValueError(f"need test_n >= 1, test_noise >= 0 and test_verifier one of {VERIFIERS}")
    model.eval()
    device = next(model.parameters()).device
    xf, tf = x0.float().to(device), target.float().to(device)
    controls, values = [], []
    for k in range(n):
        out = model(xf, tf, H_cycles=H_cycles, noise=noise if k else 0.0, gen=gen)
        controls.append(out.controls[-1].double().cpu())
        values.append(out.values[:, -1].double().cpu())
    U, V = torch.stack(controls), torch.stack(values)  # (N, B, T, m), (N, B)
    cost = torch.stack([problem.evaluate(x0, target, u)["cost"] for u in U])
    if verifier == "oracle":
        pick = cost.argmin(0)
    elif verifier == "value":
        pick = V.argmin(0)
    else:
        pick = torch.randint(n, (len(x0),), generator=gen)
    H = H_cycles or model.cfg.cycles
    return {"controls": U[pick, torch.arange(len(x0))], "pick": pick, "cost": cost, "cycles": n * H}


@torch.no_grad()
def test_time_metrics(model, problem, split: dict, cfg, seed: int) -> dict[str, float]:
    """trc/test_time/<method>/{success_rate, cost_gap_pct, final_error_mean, cycles}: the plain controller,
    then (best_of_n) every verifier at the same N and noise side by side, or (more_cycles) N * H cycles,
    so a gain of the headline pick is read next to the random control and the oracle ceiling."""
    x0, target, teacher_cost = split["x0"], split["target"], split["teacher_cost"]
    H, n = model.cfg.cycles, cfg.test_n
    runs = {"plain": dict(n=1, noise=0.0, verifier="oracle")}
    if cfg.test_time == "best_of_n":
        runs |= {v: dict(n=n, noise=cfg.test_noise, verifier=v) for v in VERIFIERS}
    elif cfg.test_time == "more_cycles":
        runs["more_cycles"] = dict(n=1, noise=0.0, verifier="oracle", H_cycles=n * H)
    out = {}
    for name, kw in runs.items():
        res = best_of_n(model, problem, x0, target, gen=torch.Generator().manual_seed(seed), **kw)
        out |= outcome(problem, x0, target, res["controls"], teacher_cost, f"trc/test_time/{name}")
        out[f"trc/test_time/{name}/cycles"] = float(res["cycles"])
    if cfg.test_time != "none":
        head = cfg.test_verifier if cfg.test_time == "best_of_n" else "more_cycles"
        out |= {f"trc/test_time/{k}": out[f"trc/test_time/{head}/{k}"] for k in ("success_rate", "cost_gap_pct")}
    return out


def outcome(problem, x0, target, controls, teacher_cost, prefix: str) -> dict[str, float]:
    ev = problem.evaluate(x0, target, controls)
    return {f"{prefix}/success_rate": float(ev["success"].double().mean()),
            f"{prefix}/final_error_mean": float(ev["final_error"].mean()),
            f"{prefix}/cost_gap_pct": cost_gap_pct(ev["cost"], teacher_cost)}


@torch.no_grad()
def halting_metrics(model, problem, split: dict) -> dict[str, float]:
    """trc/halting/<adaptive|fixed>/{success_rate, final_error_mean, cost_gap_pct, cycles} and
    trc/halting/compute_saved_pct = 1 - mean adaptive cycles / max_H_cycles, in percent."""
    model.eval()
    device = next(model.parameters()).device
    x0, target = split["x0"], split["target"]
    args = x0.float().to(device), target.float().to(device)
    adaptive = model(*args, halt=model.cfg.halt_threshold)
    fixed = model(*args)
    H, used = model.cfg.cycles, adaptive.cycles.double()
    out = {"trc/halting/fixed/cycles": float(H), "trc/halting/adaptive/cycles": float(used.mean()),
           "trc/halting/compute_saved_pct": 100 * (1 - float(used.mean()) / H)}
    for name, res in (("adaptive", adaptive), ("fixed", fixed)):
        out |= outcome(problem, x0, target, res.controls[-1].double().cpu(), split["teacher_cost"],
                       f"trc/halting/{name}")
    return out
