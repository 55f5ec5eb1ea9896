"""Search mechanics on fake operators with hand-computed answers: beam versus greedy, fallbacks
scored neutrally, per-IC independence of a batched beam, projection counts."""

from __future__ import annotations

import pytest
import torch

from ttclab.data.datasets import Normalizer
from ttclab.problems import make_problem
from ttclab.rewards import Reward
from ttclab.sampling import SamplingConfig
from ttclab.ttc.search import search


@pytest.fixture(scope="module")
def problem():
    from conftest import build_tiny_project

    return make_problem(build_tiny_project("euler1d").problem)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


class Fn(Reward):
    """A test reward from a plain function of (candidates, prev)."""

    def __init__(self, fn, tolerance=0.0):
        self.fn, self.tolerance = fn, tolerance

    def score(self, candidates, prev, truth=None):
        return self.fn(candidates, prev)




def value(state) -> int:
    return int(round(float(state.mean())))


class Offsets:
    """A fake operator on constant states: candidate j of state v is v + 1 + j (deterministic: v + 1);
    every candidate of a state whose value is in `nan_from` is NaN."""

    cfg = SamplingConfig()

    def __init__(self, nan_from=()):
        self.nan_from = set(nan_from)

    def eval(self):
        return self

    def __call__(self, u):
        return u + 1

    def sample_next(self, u, n, noise=None, generator=None):
        c = torch.stack([u + 1 + j for j in range(n)], dim=1)
        c[[value(s) in self.nan_from for s in u]] = torch.nan
        return c


def test_beam_finds_the_delayed_reward_that_greedy_misses(problem):
    """Values along a path 0 -> 1|2 -> ...; reward by candidate value f(1)=1, f(2)=0, f(3)=0.1,
    f(4)=5. Greedy takes 1 then 3 (total 1.1); a beam of 2 keeps 2 and reaches 4 (total 5)."""
    truth = torch.zeros(1, 3, 3, 8)  # one IC, two steps; only truth[:, 0] is used by this reward
    norm = Normalizer(torch.zeros(3), torch.ones(3))
    table = {1: 1.0, 2: 0.0, 3: 0.1, 4: 5.0}

    f = Fn(lambda cands, prev: torch.tensor([[table[value(c)] for c in row] for row in cands]))

    path = {}
    for k in (1, 2):
        out = search(Offsets(), norm, problem, truth, f, branching=2, beam=k,
                     sampling_cfg=SamplingConfig(), generator=gen())
        path[k] = [value(s) for s in out.trajectory[0]]
    assert path[1] == [0, 1, 3]
    assert path[2] == [0, 2, 4]


def pair_reward(table, tolerance=0.0):
    """Scores by (state value, candidate value) from `table`; NaN candidates get a finite score
    that would win if the guard let it through."""
    return Fn(lambda cands, prev: torch.tensor([[table.get((value(p), value(c)), 50.0) for c in row]
                                                for p, row in zip(prev, cands)]), tolerance)


def constant_ics(*values, steps=2):
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, steps + 1, 3, 8).clone()


# IC 0 from 0: kept {1, 2}; from 1 the candidates 2, 3 tie at -10 (fallback to the deterministic 2),
# from 2 they score -1 and -1.5. True path scores: 0-1-2 is -11, 0-2-3 is -2.1. IC 1 from 10: kept
# {11, 12}; 11's candidates are NaN (fallback to 12, neutral = the mean -3 of 12's valid scores), so
# 10-11-12 is -4 while 10-12-13 is -2.1. A fallback scored 0 kept the -11 and -4 paths.
TABLE = {(0, 1): -1.0, (0, 2): -1.1, (1, 2): -10.0, (1, 3): -10.0, (2, 3): -1.0, (2, 4): -1.5,
         (10, 11): -1.0, (10, 12): -1.1, (12, 13): -1.0, (12, 14): -5.0}


def test_beam_fallback_carries_a_neutral_score_not_the_best_possible(problem):
    norm = Normalizer(torch.zeros(3), torch.ones(3))
    out = search(Offsets(nan_from={11}), norm, problem, constant_ics(0, 10), pair_reward(TABLE), branching=2,
                 beam=2, sampling_cfg=SamplingConfig(), generator=gen())
    assert [[value(s) for s in traj] for traj in out.trajectory] == [[0, 2, 3], [10, 12, 13]]
    assert out.fallbacks == 2  # state 1 (tie) and state 11 (all NaN), one step each
    assert torch.isfinite(out.trajectory).all()


def test_multi_ic_beam_is_the_same_as_one_ic_at_a_time(problem):
    """Batching ICs must not couple them: ranking, fallbacks and backtracking are per IC."""
    norm = Normalizer(torch.zeros(3), torch.ones(3))
    op, table = Offsets(nan_from={11, 5}), {**TABLE, (20, 21): 2.0, (20, 22): 2.0, (20, 23): 2.0}  # IC 20 ties
    kw = dict(branching=3, beam=2, sampling_cfg=SamplingConfig(), generator=gen())
    ics = constant_ics(0, 10, 20, steps=3)
    both = search(op, norm, problem, ics, pair_reward(table), **kw)
    alone = [search(op, norm, problem, ics[i : i + 1], pair_reward(table), **kw) for i in range(3)]
    assert torch.equal(both.trajectory, torch.cat([a.trajectory for a in alone]))
    assert both.fallbacks == sum(a.fallbacks for a in alone) > 0
    assert [value(s) for s in both.trajectory[2]][:2] == [20, 21]  # the tie fell back to 20 + 1


class Fixed:
    """A fake operator whose candidates are always `cands` (N, C, *X); deterministic step: cands[0]."""

    cfg = SamplingConfig()

    def __init__(self, cands):
        self.cands = cands

    def eval(self):
        return self

    def __call__(self, u):
        return self.cands[:1].expand(u.shape[0], *self.cands.shape[1:])

    def sample_next(self, u, n, noise=None, generator=None):
        return self.cands.expand(u.shape[0], *self.cands.shape)


def test_search_counts_partial_and_refused_projections(problem):
    """At rest (rho = p = 1): a candidate with twice the mass whose density the full shift would
    make negative is projected part of the way; one with a negative pressure cell is refused."""
    x = torch.from_numpy(problem.cell_centres(0)).float()
    rest = torch.stack([torch.ones(32), torch.zeros(32), torch.ones(32)])
    heavy, negative = rest.clone(), rest.clone()
    heavy[0] = 2 + 1.5 * torch.sin(2 * torch.pi * x / problem.extent[0])
    negative[2, :3] = -0.5
    truth = rest.expand(2, 2, 3, 32).clone()
    out = search(Fixed(torch.stack([heavy, negative, rest])), Normalizer(torch.zeros(3), torch.ones(3)), problem, truth,
                 Fn(lambda c, p: torch.tensor([[1.0, 2.0, 0.0]]).expand(c.shape[0], 3)), branching=3,
                 sampling_cfg=SamplingConfig(), project=True, generator=gen())
    assert (out.projection_partial, out.projection_refused, out.fallbacks) == (2, 2, 0)  # per IC one each
    assert torch.equal(out.trajectory[:, 1], negative.expand(2, 3, 32))  # the refused one, unchanged
