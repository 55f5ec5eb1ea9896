"""TTC controllers, ARM, metrics: invariants and hand-computed answers."""

from __future__ import annotations

import pytest
import torch

from ttclab.data.datasets import SplitData
from ttclab.metrics.ttc import best_pick_rate, headroom_captured, sample_gain, summarize_gain
from ttclab.models import make_model
from ttclab.problems import make_problem
from ttclab.rewards import make_reward
from ttclab.rewards.arm import ARMConfig, arm_terms
from ttclab.sampling import SamplingConfig, candidates
from ttclab.ttc.search import search

from test_beam import Fn, gen


@pytest.fixture(scope="module")
def setup(tiny_data_file):
    from conftest import build_tiny_project

    cfg = build_tiny_project("euler1d")
    problem = make_problem(cfg.problem)
    data = SplitData(tiny_data_file("euler1d"), problem, cfg.data)
    torch.manual_seed(0)
    model = make_model(cfg.model, n_fields=problem.n_fields, ndim=1).eval()
    return cfg, problem, data, model


def test_greedy_with_one_noiseless_candidate_is_the_baseline(setup):
    cfg, problem, data, model = setup
    truth = data["test"]
    base = search(model, data.normalizer, problem, truth, make_reward("baseline"))
    quiet = SamplingConfig(latent_sigma=0.0)
    for name in ("arm", "oracle", "random"):
        reward = make_reward(name, problem=problem, arm=ARMConfig(), generator=gen(1))
        greedy = search(model, data.normalizer, problem, truth, reward, branching=1,
                        sampling_cfg=quiet, generator=gen())
        assert torch.equal(greedy.trajectory, base.trajectory), name


def test_beam_of_width_one_equals_a_hand_written_greedy_loop(setup):
    cfg, problem, data, model = setup
    truth, norm = data["test"], data.normalizer
    reward = make_reward("arm", problem=problem, arm=ARMConfig())
    beam = search(model, norm, problem, truth, reward, branching=4, beam=1,
                  sampling_cfg=cfg.sampling, generator=gen())
    g, x, states = gen(), norm.encode(truth[:, 0], 1), [truth[:, 0]]
    for _ in range(truth.shape[1] - 1):
        cand_n = candidates(model, x, 4, cfg.sampling, g)
        scores = reward(norm.decode(cand_n, 1), norm.decode(x, 1))
        x = cand_n[torch.arange(len(x)), scores.argmax(dim=1)]
        states.append(norm.decode(x, 1))
    assert torch.allclose(beam.trajectory, torch.stack(states, dim=1), atol=1e-6)


def test_oracle_pick_is_the_best_candidate_and_beats_random(setup):
    cfg, problem, data, model = setup
    truth = data["test"]
    one_step = truth[:, :2]
    g = gen()
    cands = data.normalizer.decode(candidates(model, data.normalizer.encode(one_step[:, 0], 1), 6, cfg.sampling, g), 1)
    out = search(model, data.normalizer, problem, one_step, make_reward("oracle"), branching=6,
                 sampling_cfg=cfg.sampling, generator=gen())
    picked = ((out.trajectory[:, 1] - one_step[:, 1]) ** 2).flatten(1).mean(1)
    every = ((cands - one_step[:, 1:2]) ** 2).flatten(2).mean(2)
    assert torch.allclose(picked, every.min(dim=1).values)
    final = {}
    for name in ("oracle", "random"):
        o = search(model, data.normalizer, problem, truth, make_reward(name, generator=gen(1)),
                   branching=6, sampling_cfg=cfg.sampling, generator=gen())
        final[name] = float(((o.trajectory[:, -1] - truth[:, -1]) ** 2).mean())
    assert final["oracle"] <= final["random"]


def test_same_seed_same_rollout_other_seed_differs(setup):
    cfg, problem, data, model = setup
    reward = make_reward("arm", problem=problem, arm=ARMConfig())
    run = lambda s: search(model, data.normalizer, problem, data["test"], reward, branching=3,  # noqa: E731
                           sampling_cfg=cfg.sampling, generator=gen(s)).trajectory
    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


class NaNFirst:
    """A fake operator: candidate 0 of every state is NaN, the others are the state plus noise."""

    def __init__(self, all_nan=False):
        self.cfg, self.all_nan = SamplingConfig(), all_nan

    def eval(self):
        return self

    def __call__(self, u):
        return u * 0.5

    def sample_next(self, u, n, noise=None, generator=None):
        c = u.unsqueeze(1) + 0.01 * torch.randn(u.shape[0], n, *u.shape[1:], generator=generator)
        c[:, 0 if not self.all_nan else slice(None)] = torch.nan
        return c


def test_nan_candidates_are_never_selected_and_all_nan_falls_back(setup):
    cfg, problem, data, _ = setup
    truth = data["test"][:, :3]

    def loves_nan_fn(cands, prev):  # would pick candidate 0 if the guardrail let it
        s = torch.zeros(cands.shape[:2])
        s[:, 0] = 100.0
        return s + torch.rand(cands.shape[:2]) * 1e-3

    loves_nan = Fn(loves_nan_fn)
    out = search(NaNFirst(), data.normalizer, problem, truth, loves_nan, branching=4,
                 sampling_cfg=cfg.sampling, generator=gen())
    assert torch.isfinite(out.trajectory).all() and out.fallbacks == 0
    out = search(NaNFirst(all_nan=True), data.normalizer, problem, truth, loves_nan, branching=4,
                 sampling_cfg=cfg.sampling, generator=gen())
    assert out.fallbacks == truth.shape[0] * 2  # every IC at both steps
    x = data.normalizer.encode(truth[:, 0], 1)
    assert torch.allclose(out.trajectory[:, 1], data.normalizer.decode(x * 0.5, 1), atol=1e-6)


def test_arm_is_zero_on_exact_solver_steps_and_positive_when_conservation_breaks(setup):
    _, problem, data, _ = setup
    u = data["train"].double()
    prev, nxt = u[:, 0], u[:, 1:2]
    terms = arm_terms(problem, nxt, prev)
    for k in ("mass", "momentum", "energy", "bc", "positivity"):
        assert terms[k].abs().max() < 1e-6, k
    broken = nxt.clone()
    broken[:, :, 0] *= 1.1  # 10% more density: mass up 10%, energy (kinetic part) up too
    terms = arm_terms(problem, broken, prev)
    assert torch.allclose(terms["mass"], torch.full_like(terms["mass"], 0.1), rtol=1e-6)
    assert (terms["energy"] > 0).all()
    negative = nxt.clone()
    negative[:, :, 2, :4] = -1.0  # negative pressure in four cells
    assert (arm_terms(problem, negative, prev)["positivity"] > 0).all()
    score = make_reward("arm", problem=problem, arm=ARMConfig())(torch.cat([nxt, broken], 1), prev)
    assert (score[:, 0] > score[:, 1]).all()


def test_conservation_projection_hits_the_totals_and_keeps_positivity(setup):
    _, problem, data, _ = setup
    u = data["test"].double()
    target = problem.conserved(u[:, 0])
    off = u[:, -1] * torch.tensor([1.05, 0.9, 0.97]).view(1, 3, 1).double() + 0.01
    projected = problem.project_conserved(off, target)
    got = problem.conserved(projected)
    for q in target:
        assert torch.allclose(got[q], target[q], rtol=1e-9, atol=1e-12), q
    assert (projected[:, 0] > 0).all() and (projected[:, 2] > 0).all()


def test_sample_gain_and_summaries_against_hand_computed_values():
    base = torch.tensor([2.0, 1.0, 4.0])
    ttc = torch.tensor([1.0, 1.0, 5.0])
    gain = sample_gain(base, ttc)
    assert torch.allclose(gain, torch.tensor([50.0, 0.0, -25.0]))
    s = summarize_gain(gain)
    assert s["sample_gain/mean"] == pytest.approx(25.0 / 3)
    assert s["sample_gain/median"] == 0.0
    assert s["sample_gain/improved_frac"] == pytest.approx(1 / 3)
    assert headroom_captured(1.0, 0.9, 0.8) == pytest.approx(0.5)
    scores = torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    errors = torch.tensor([[0.1, 0.2, 0.3], [0.1, 0.2, 0.3]])
    assert best_pick_rate(scores, errors) == 0.5


def test_the_ttc_stage_gives_the_prm_its_problem_so_a_foreign_prm_is_refused(setup, tmp_path):
    from ttclab.models.prm import PRM, PRMConfig
    from ttclab.rewards.prm import PRMCheckpointError, save_prm
    from ttclab.stages.ttc import _reward

    cfg, problem, data, _ = setup
    prm = PRM(PRMConfig(anchor="set_mean", width=8, layers=2), n_fields=3, ndim=1)
    path = save_prm(tmp_path / "prm.pt", prm, data.normalizer, {"type": "burgers1d"}, {"anchor": "set_mean"}, 3)

    class Ctx:
        device = "cpu"

        def input(self, name, cfg):
            assert name == "prm"
            return path

    with pytest.raises(PRMCheckpointError, match=r"prm\.pt: PRM was trained on 'burgers1d', not 'euler1d'"):
        _reward("prm", cfg, Ctx(), problem)


def test_comparison_key_separates_runs_of_other_prm_settings_only():
    from conftest import build_tiny_project
    from ttclab.stages.ttc import comparison_key

    key = comparison_key(build_tiny_project("euler1d"))
    same = ("ttc.reward=prm", "ttc.project_conservation=true", "sampling.seed=3")  # seeds: one row, aggregated
    assert all(comparison_key(build_tiny_project("euler1d", s)) == key for s in same)
    for other in ("prm.width=7", "triplets.k=3", "ttc.beam=2", "sampling.latent_sigma=0.5", "arm.w_mass=2"):
        assert comparison_key(build_tiny_project("euler1d", other)) != key, other


def test_every_selector_is_named_once_in_the_registry():
    from ttclab.rewards import REWARDS, control_names, selector_names
    from ttclab.ttc.search import TTCConfig

    assert selector_names() == ["baseline", "random", "ensemble", "arm", "prm", "oracle"]
    assert control_names() == ["random", "ensemble", "oracle"]
    assert REWARDS.get("baseline").deterministic and REWARDS.get("ensemble").aggregate == "mean"
    assert REWARDS.get("oracle").needs_truth and not REWARDS.get("random").abstains
    with pytest.raises(ValueError, match="valid: baseline, random, ensemble, arm, prm, oracle"):
        TTCConfig(reward="armm").validate()


def test_example_figure_is_drawn_on_the_problems_cell_centres(monkeypatch):
    """PDEBench's 1D CFD domain is (-1, 1): the example figure's x axis must say so, not (0, 1)."""
    from conftest import build_tiny_project
    from ttclab.stages import ttc as stage

    problem = make_problem(build_tiny_project("euler1d", "problem.domain=[-1.0, 1.0]").problem)
    truth = torch.rand(2, 3, 3, 32) + 1
    ev = stage._evaluate(problem, truth, truth)
    seen = {}
    monkeypatch.setattr(stage.figures, "fields_at_times", lambda x, *a: seen.update(x=x) or "")

    class Run:
        def text(self, body, name):
            pass

    stage._artifacts(Run(), problem, truth, ev, ev, torch.zeros(2), {"baseline": ev["mse"].mean(0)}, [1, 2],
                     "arm", truth)
    assert seen["x"][0] == pytest.approx(-1 + 1 / 32) and seen["x"][-1] == pytest.approx(1 - 1 / 32)


def test_a_look_ahead_is_recorded_beside_the_errors_and_never_changes_the_rollout(setup):
    """search's look_ahead is a diagnostic: given the next-state MSE as its yardstick it records
    exactly the errors it is recorded beside, and the rollout is the one without it, bit for bit."""
    cfg, problem, data, model = setup
    truth, norm = data["test"], data.normalizer
    reward = make_reward("arm", problem=problem, arm=ARMConfig())

    def next_state_error(t, cand, ic):
        return ((cand - truth[ic, t + 1].unsqueeze(1)) ** 2).flatten(2).mean(2)

    plain = search(model, norm, problem, truth, reward, branching=3, sampling_cfg=cfg.sampling, generator=gen())
    seen = search(model, norm, problem, truth, reward, branching=3, sampling_cfg=cfg.sampling, generator=gen(),
                  look_ahead=next_state_error)
    assert torch.equal(seen.trajectory, plain.trajectory) and not plain.ahead
    assert len(seen.ahead) == truth.shape[1] - 1
    for ahead, errors in zip(seen.ahead, seen.errors):
        assert torch.equal(ahead, errors)


def test_ttc_ranks_against_the_error_h_steps_ahead_at_its_stated_cost(isolated_tracking, tiny_project):
    """ttc.rank_horizon = H continues each candidate of step t min(H, T-1-t) deterministic steps:
    N * sum_t min(H, T-1-t) / T diagnostic passes per IC and step, none counted as the selector's
    compute; at the last step (H capped to 0) the horizon ranking is the next-state one; the rollout,
    its controls and its comparison are those of the run without the diagnostic."""
    from mlflow.tracking import MlflowClient

    from ttclab.stages import Context
    from ttclab.stages.ttc import comparison_key
    from ttclab.tracking.store import Tracker

    sets = ("ttc.reward=arm", "ttc.branching=3")
    cfg, plain_cfg = tiny_project("euler1d", *sets, "ttc.rank_horizon=2"), tiny_project("euler1d", *sets)
    ctx = Context(Tracker(isolated_tracking), progress=False)
    run_id, out = ctx.run("ttc", cfg)
    _, plain = ctx.run("ttc", plain_cfg)
    steps = 8  # tiny euler1d: 9 snapshots
    assert out["cost/diagnostic_forward_per_step"] == 3 * sum(min(2, steps - 1 - t) for t in range(steps)) / steps
    assert plain["cost/diagnostic_forward_per_step"] == 0
    assert out["cost/forward_per_step"] == plain["cost/forward_per_step"]
    assert out[f"rollout_mse/h{steps}"] == plain[f"rollout_mse/h{steps}"]
    assert -1 <= out["reward/spearman_horizon"] <= 1 and "reward/spearman_horizon" not in plain
    assert comparison_key(cfg) == comparison_key(plain_cfg)
    client = MlflowClient(isolated_tracking)
    last = {k: [m.value for m in client.get_metric_history(run_id, f"reward/by_step/{k}/spearman") if m.step == steps]
            for k in ("next", "horizon")}
    assert last["horizon"] == last["next"] and len(last["next"]) == 1
