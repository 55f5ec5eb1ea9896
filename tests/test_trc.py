"""Tiny recursive control: teachers, dynamics, controller shapes, losses, a short BC training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ttclab.models import make_model
from ttclab.models.trc import PRESETS, TRCModelConfig
from ttclab.problems import make_problem
from ttclab.problems.control.double_integrator import DoubleIntegratorConfig
from ttclab.problems.control.vanderpol import VanDerPolConfig
from ttclab.training.losses import CONTROLLER_LOSSES, iterate_costs, process_loss
from ttclab.config import to_dict
from ttclab.models.checkpoint import CheckpointError
from ttclab.training.trc import TRCConfig, fit, load_controller, save_controller, validate_controller, with_teacher_cost


def problems(n, seed=0, **kw):
    problem = make_problem(kw.pop("cfg")(**kw))
    x0, target = problem.sample(n, torch.Generator().manual_seed(seed))
    return problem, x0, target


def test_double_integrator_teacher_hits_the_target_to_round_off():
    problem, x0, target = problems(256, cfg=DoubleIntegratorConfig)
    u, stats = problem.teacher(x0, target)
    final = problem.rollout(x0, u)[:, -1]
    assert u.shape == (256, 15, 1) and stats["clip_rate"] == 0.0
    assert (final - target).abs().max() < 1e-12
    # Minimum energy: any other exact solution U* + N (N in the null space of C) costs more.
    _, C = problem.reachability()
    null = torch.linalg.svd(C).Vh[2:]  # (T-2, T): directions that leave x_T unchanged
    other = u + (0.1 * torch.randn(256, len(null), dtype=torch.float64) @ null)[..., None]
    assert (problem.rollout(x0, other)[:, -1] - target).abs().max() < 1e-12
    assert ((other**2).sum((1, 2)) > (u**2).sum((1, 2))).all()


def test_double_integrator_teacher_clips_only_when_needed_and_reports_it():
    problem, x0, target = problems(256, cfg=DoubleIntegratorConfig, u_max=1.0)
    u, stats = problem.teacher(x0, target)
    assert u.abs().max() <= 1.0
    assert 0 < stats["clip_rate"] < 1
    missed = (problem.rollout(x0, u)[:, -1] - target).norm(dim=-1) > 1e-9
    assert missed.double().mean() == pytest.approx(stats["clip_rate"])  # exact wherever unclipped


def test_vanderpol_teacher_beats_lqr_within_the_bound():
    problem, x0, target = problems(64, seed=3, cfg=VanDerPolConfig)
    u, stats = problem.teacher(x0, target)
    lqr = problem.lqr(x0, target)
    cost = problem.cost(problem.rollout(x0, u), u, target)
    lqr_cost = problem.cost(problem.rollout(x0, lqr), lqr, target)
    assert u.abs().max() <= problem.cfg.u_max
    assert (cost <= lqr_cost).all() and cost.mean() < 0.99 * lqr_cost.mean()
    assert stats["lqr_cost_mean"] == pytest.approx(float(lqr_cost.mean()))
    # A converged solve: the cost gradient vanishes wherever the bound is not active.
    u = u.clone().requires_grad_(True)
    problem.cost(problem.rollout(x0, u), u, target).sum().backward()
    assert u.grad[u.detach().abs() < problem.cfg.u_max - 1e-6].abs().max() < 1e-5


def numpy_rollout(name, cfg, x0, u):
    """Reference dynamics written independently in numpy (explicit formulas, no matrices shared)."""
    x, out = x0.copy(), [x0.copy()]
    for k in range(u.shape[1]):
        uk = u[:, k, 0]
        if name == "double_integrator":
            x = np.stack([x[:, 0] + cfg.dt * x[:, 1] + 0.5 * cfg.dt**2 * uk, x[:, 1] + cfg.dt * uk], axis=1)
        else:
            def f(s):
                return np.stack([s[:, 1], cfg.mu * (1 - s[:, 0] ** 2) * s[:, 1] - s[:, 0] + uk], axis=1)
            k1 = f(x)
            k2 = f(x + cfg.dt / 2 * k1)
            k3 = f(x + cfg.dt / 2 * k2)
            k4 = f(x + cfg.dt * k3)
            x = x + cfg.dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        out.append(x)
    return np.stack(out, axis=1)


@pytest.mark.parametrize("cfg_cls", [DoubleIntegratorConfig, VanDerPolConfig])
def test_torch_dynamics_match_numpy_reference(cfg_cls):
    problem, x0, _ = problems(32, cfg=cfg_cls)
    u = (2 * torch.rand(32, problem.cfg.horizon, 1, dtype=torch.float64) - 1) * problem.cfg.u_max
    ref = numpy_rollout(problem.name, problem.cfg, x0.numpy(), u.numpy())
    np.testing.assert_allclose(problem.rollout(x0, u).numpy(), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("variant", ["two_level", "single"])
def test_controller_shapes_bounds_and_size(preset, variant):
    problem = make_problem(VanDerPolConfig())
    model = make_model(TRCModelConfig(preset=preset, variant=variant, H_cycles=2, L_cycles=2), **problem.dims)
    x0 = 3 * torch.randn(5, 2)
    with torch.no_grad():
        out = model(x0, torch.zeros_like(x0))
    assert len(out.controls) == 3 and out.values.shape == (5, 3)
    assert all(u.shape == (5, 100, 1) and u.abs().max() <= problem.cfg.u_max for u in out.controls)
    n = sum(p.numel() for p in model.parameters())
    if variant == "two_level":  # the presets' nominal sizes
        assert {"small": 0.05e6, "medium": 0.3e6, "large": 1.5e6}[preset] < n < {"small": 0.2e6, "medium": 0.6e6,
                                                                                 "large": 2.5e6}[preset]


def graph_size(t: torch.Tensor) -> int:
    seen, todo = set(), [t.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        todo += [nxt for nxt, _ in node.next_functions]
    return len(seen)


def test_gradient_truncation_keeps_the_forward_and_shrinks_the_graph():
    problem = make_problem(DoubleIntegratorConfig())
    x0, target = torch.randn(8, 2), torch.randn(8, 2)
    outs = {}
    for last_only in (False, True):
        torch.manual_seed(0)
        model = make_model(TRCModelConfig(preset="small", H_cycles=3, grad_last_only=last_only), **problem.dims)
        outs[last_only] = model(x0, target)
    full, cut = outs[False], outs[True]
    for a, b in zip(full.controls, cut.controls):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert all(u.requires_grad for u in full.controls)
    assert [u.requires_grad for u in cut.controls] == [True, False, False, True]
    assert graph_size(cut.controls[-1]) < 0.6 * graph_size(full.controls[-1])


@pytest.mark.parametrize("variant", ["two_level", "single"])
@pytest.mark.parametrize("grad_last_only", [False, True])
def test_behaviour_cloning_gradient_reaches_every_parameter(variant, grad_last_only):
    """Every parameter shapes a reported metric (the first guess and each refinement are reported,
    the value head is the value probe), so each must receive a gradient from the training loss. With
    grad_last_only the truncated cycles used to cut the first-guess decoder and z_L0 off."""
    problem, x0, target = problems(8, cfg=DoubleIntegratorConfig)
    teacher, _ = problem.teacher(x0, target)
    batch = {"x0": x0.float(), "target": target.float(), "controls": teacher.float()}
    torch.manual_seed(0)
    model = make_model(TRCModelConfig(latent=16, layers=1, H_cycles=3, L_cycles=2, variant=variant,
                                      grad_last_only=grad_last_only), **problem.dims)
    CONTROLLER_LOSSES.get("bc")(model, batch, TRCConfig(), problem)["loss"].backward()
    silent = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert silent == []

def test_process_term_is_not_lowered_by_a_worse_first_guess():
    torch.manual_seed(0)
    costs = torch.rand(64, 4) * 5 + 0.1
    scale = torch.tensor(2.0)  # data-only, e.g. the teacher's mean cost
    base = process_loss(costs, scale)
    for worse in (0.01, 0.5, 3.0, 100.0):
        bumped = costs.clone()
        bumped[:, 0] += worse
        assert process_loss(bumped, scale) >= base
    c = costs.clone().requires_grad_(True)
    process_loss(c, scale).backward()
    assert (c.grad[:, 0] >= 0).all()
    # The flawed normalization by the model's own first-guess cost is lowered by a worse guess,
    # which is what the test above guards against.
    flawed = lambda c: ((c[:, :-1] - c[:, 1:]).sum(1) / c[:, 0]).neg().mean()  # noqa: E731
    bumped = costs.clone()
    bumped[:, 0] += 3.0
    assert flawed(bumped) < flawed(costs)


def test_iterate_costs_matches_one_rollout_per_sequence():
    problem, x0, target = problems(6, cfg=VanDerPolConfig)
    seqs = [torch.rand(6, 100, 1, dtype=torch.float64) for _ in range(3)]
    costs = iterate_costs(problem, x0, target, seqs)
    expect = torch.stack([problem.cost(problem.rollout(x0, u), u, target) for u in seqs], dim=1)
    torch.testing.assert_close(costs, expect)


def test_short_behaviour_cloning_on_double_integrator_succeeds():
    problem = make_problem(DoubleIntegratorConfig(n_val=100, n_test=200))
    data, _ = problem.make_dataset()
    data = with_teacher_cost(problem, data)
    torch.manual_seed(0)
    model = make_model(TRCModelConfig(latent=64, layers=1, H_cycles=1, L_cycles=1), **problem.dims)
    state = fit(model, problem, data, TRCConfig(epochs=20, batch_size=16, lr=5e-3, value_weight=0.0),
                progress=False)
    model.load_state_dict(state["best_state"])
    result = validate_controller(model, problem, data["test"], "cpu")
    assert result["val/success_rate"] > 0.9


def test_controller_checkpoint_round_trip_and_bad_files(tmp_path):
    """Round trip is exact; a file without state_dict, or with another architecture's weights, is a
    one-line CheckpointError naming the file and the entry."""
    problem_cfg = DoubleIntegratorConfig()
    problem = make_problem(problem_cfg)
    small, wide = TRCModelConfig(latent=16, layers=1, H_cycles=1), TRCModelConfig(latent=24, layers=1, H_cycles=1)
    model = make_model(small, **problem.dims)
    path = save_controller(tmp_path / "trc.pt", model, problem_cfg, small)
    loaded, loaded_problem = load_controller(path)
    x0, target = torch.randn(3, 2), torch.randn(3, 2)
    assert torch.equal(loaded(x0, target).controls[-1], model.eval()(x0, target).controls[-1])
    assert loaded_problem.name == "double_integrator"
    blob = torch.load(path, weights_only=True)
    torch.save({k: v for k, v in blob.items() if k != "state_dict"}, no_weights := tmp_path / "nosd.pt")
    with pytest.raises(CheckpointError, match=r"nosd.pt: controller checkpoint has no 'state_dict' entry"):
        load_controller(no_weights)
    torch.save({**blob, "model": to_dict(wide)}, other := tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other.pt: weights do not match .*\(16,\) vs \(24,\)"):
        load_controller(other)


@pytest.mark.parametrize("cfg_cls", [DoubleIntegratorConfig, VanDerPolConfig])
def test_best_of_n_one_is_plain_and_oracle_never_costlier(cfg_cls):
    from ttclab.training.trc_test_time import best_of_n

    problem, x0, target = problems(32, cfg=cfg_cls)
    torch.manual_seed(0)
    model = make_model(TRCModelConfig(latent=16, layers=1, H_cycles=2, L_cycles=1), **problem.dims)
    with torch.no_grad():
        plain = model(x0.float(), target.float()).controls[-1].double()
    plain_cost = problem.evaluate(x0, target, plain)["cost"]
    for verifier in ("value", "oracle", "random"):
        one = best_of_n(model, problem, x0, target, 1, 0.5, verifier, torch.Generator().manual_seed(1))
        assert torch.equal(one["controls"], plain) and one["cycles"] == 2
    many = best_of_n(model, problem, x0, target, 6, 0.5, "oracle", torch.Generator().manual_seed(1))
    picked = problem.evaluate(x0, target, many["controls"])["cost"]
    assert (picked <= plain_cost).all() and (picked < plain_cost).any() and many["cycles"] == 12
    # The noise draws distinct refinements; more_cycles keeps the trained cycles' iterates as a prefix.
    assert (many["cost"][1:] != many["cost"][0]).all()
    with torch.no_grad():
        longer = model(x0.float(), target.float(), H_cycles=4).controls
    assert len(longer) == 5 and torch.equal(longer[2].double(), plain)


@pytest.mark.parametrize("cfg_cls", [DoubleIntegratorConfig, VanDerPolConfig])
def test_halting_that_never_fires_is_fixed_H_and_a_firing_one_freezes(cfg_cls):
    problem, x0, target = problems(16, cfg=cfg_cls)
    torch.manual_seed(0)
    cfg = TRCModelConfig(latent=16, layers=1, H_cycles=2, L_cycles=1, halting="act", max_H_cycles=4)
    model = make_model(cfg, **problem.dims).eval()
    args = x0.float(), target.float()
    with torch.no_grad():
        fixed, never = model(*args), model(*args, halt=float("-inf"))
        always = model(*args, halt=float("inf"))
        # Halt each problem at its own cycle: the threshold between its 2nd and 3rd predicted gains
        # is not monotone per problem, so pick a threshold and derive the expected stop from the gains.
        t = float(fixed.gains[:, :4].median())
        some = model(*args, halt=t)
    assert len(fixed.controls) == 5 and fixed.gains.shape == (16, 5) and fixed.cycles is None
    for a, b in zip(fixed.controls, never.controls):
        assert torch.equal(a, b)
    assert torch.equal(never.cycles, torch.full((16,), 4)) and torch.equal(always.cycles, torch.zeros(16).long())
    assert all(torch.equal(u, fixed.controls[0]) for u in always.controls)
    below = (fixed.gains[:, :4] < t).long()  # the gains do not depend on halting (latents run on)
    stop = torch.where(below.any(1), below.argmax(1), torch.tensor(4))
    assert torch.equal(some.cycles, stop) and 0 < stop.double().mean() < 4
    for b in range(16):
        assert torch.equal(some.controls[-1][b], fixed.controls[int(stop[b])][b])


def test_halt_target_by_hand():
    from ttclab.training.losses import halt_loss

    # one problem, costs after the first guess and 2 cycles: 3, 1, 1 with teacher scale 1
    costs = torch.tensor([[3.0, 1.0, 1.0]])
    gains = torch.tensor([[0.5, 0.2, 99.0]])  # the last gain has no next cycle: ignored
    realized = [np.log(4 / 2), np.log(2 / 2)]  # log(1 + 3) - log(1 + 1), log(1 + 1) - log(1 + 1)
    expect = ((0.5 - realized[0]) ** 2 + (0.2 - realized[1]) ** 2) / 2
    assert float(halt_loss(gains, costs, torch.tensor(1.0))) == pytest.approx(expect, rel=1e-6)
    # scale 10: near the teacher's cost the target is the cost difference in teacher units
    exact = np.log(1.02 / 1.01)  # costs 0.2 -> 0.1 at scale 10
    assert exact == pytest.approx(0.01, rel=0.02)
    small = torch.tensor([[0.2, 0.1, 0.1]], dtype=torch.float64)
    assert float(halt_loss(torch.tensor([[exact, 0.0, 0.0]]), small, torch.tensor(10.0))) < 1e-20
    # the target is detached: only the head is trained
    c = costs.clone().requires_grad_(True)
    g = gains.clone().requires_grad_(True)
    halt_loss(g, c, torch.tensor(1.0)).backward()
    assert c.grad is None and g.grad[0, 2] == 0 and g.grad[0, 0] != 0


def test_halting_loss_is_logged_and_reaches_only_the_halt_head():
    problem, x0, target = problems(8, cfg=DoubleIntegratorConfig)
    teacher, _ = problem.teacher(x0, target)
    batch = {"x0": x0.float(), "target": target.float(), "controls": teacher.float(),
             "teacher_cost": problem.evaluate(x0, target, teacher)["cost"].float()}
    torch.manual_seed(0)
    model = make_model(TRCModelConfig(latent=16, layers=1, H_cycles=2, L_cycles=1, halting="act"), **problem.dims)
    terms = CONTROLLER_LOSSES.get("bc")(model, batch, TRCConfig(value_weight=0.0, bc_weight=0.0), problem)
    assert set(terms) == {"loss", "bc", "halt"} and float(terms["halt"]) > 0
    terms["loss"].backward()
    moved = {name.split(".")[0] for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert moved == {"halt_head"}


def test_process_floor_stops_paying_at_the_teacher_cost():
    costs = torch.tensor([[4.0, 2.0, 1.0], [1.0, 0.5, 0.5]], requires_grad=True)
    floor = torch.tensor([1.5, 1.0])
    loss = process_loss(costs, torch.tensor(1.0), floor)
    # excess costs [2.5, 0.5, 0] and [0, 0, 0]: (2.5 + 0.5 + 0) / 3 / 2 problems
    assert float(loss) == pytest.approx(0.5)
    loss.backward()
    assert (costs.grad[1] == 0).all() and costs.grad[0, 2] == 0 and costs.grad[0, 0] > 0


@pytest.mark.parametrize("override, message", [
    ({"max_H_cycles": 5}, r"max_H_cycles is the cap of adaptive halting; set model.halting=act"),
    ({"halting": "act", "max_H_cycles": -1}, r"max_H_cycles -1 < 0"),
    ({"halting": "sometimes"}, r"model.halting"),
])
def test_halting_config_errors_are_one_line(override, message):
    from ttclab.config import ConfigError, build

    with pytest.raises(ConfigError, match=message) as err:
        build(TRCModelConfig, override, "p.yaml", "model")
    assert "\n" not in str(err.value)
