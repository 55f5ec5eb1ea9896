"""Controller overhead of greedy TTC, measured side by side in one run on the default project sizes.

Prints two ratios:
  1. candidate-steps/s of greedy TTC (ARM reward, N=5) / candidate-steps/s of the raw batched
     forward pass of the same operator at the same total batch (B*N)   -- target >= 0.8
  2. wall time of TTC(N=5) / wall time of the deterministic baseline rollout

Run: python benchmarks/ttc_overhead.py [--ics 45] [--steps 50] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ttclab.data.datasets import Normalizer, channel_stats
from ttclab.models import make_model
from ttclab.project import load_project
from ttclab.problems import make_problem
from ttclab.rewards import make_reward
from ttclab.sampling import candidates
from ttclab.ttc.search import search

PROJECT = Path(__file__).resolve().parents[1] / "projects" / "euler1d.yaml"


def best_of_interleaved(fns: list, repeats: int) -> list[float]:
    """Best wall time of each function, the functions alternating in every round, so a load change
    on the shared machine hits all of them alike."""
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ics", type=int, default=45)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--branching", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cfg = load_project(PROJECT, [f"problem.n_snapshots={args.steps + 1}"])
    problem = make_problem(cfg.problem)
    truth = torch.from_numpy(problem.solve(args.ics, seed=1, progress=False).fields)
    norm = Normalizer(*channel_stats(truth.numpy()))
    torch.manual_seed(0)
    model = make_model(cfg.model, n_fields=problem.n_fields, ndim=problem.ndim).eval()
    reward = make_reward("arm", problem=problem, arm=cfg.arm)
    n, b = args.branching, args.ics
    x0 = norm.encode(truth[:, 0], 1)

    def raw():
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            x = x0
            for _ in range(args.steps):
                x = candidates(model, x, n, cfg.sampling, g)[:, 0]

    def ttc():
        search(model, norm, problem, truth, reward, branching=n, sampling_cfg=cfg.sampling,
               generator=torch.Generator().manual_seed(0))

    def baseline():
        search(model, norm, problem, truth, make_reward("baseline"))

    t_raw, t_ttc, t_base = best_of_interleaved([raw, ttc, baseline], args.repeats)
    cand_steps = b * n * args.steps
    print(f"ICs {b}, steps {args.steps}, N {n}, threads {torch.get_num_threads()}")
    print(f"raw batched forward : {cand_steps / t_raw:10.0f} candidate-steps/s ({t_raw:.2f} s)")
    print(f"greedy TTC (ARM)    : {cand_steps / t_ttc:10.0f} candidate-steps/s ({t_ttc:.2f} s)")
    print(f"baseline rollout    : {b * args.steps / t_base:10.0f} steps/s ({t_base:.2f} s)")
    print(f"ratio TTC / raw throughput     : {t_raw / t_ttc:.2f}   (target >= 0.8)")
    print(f"ratio TTC(N={n}) / baseline wall: {t_ttc / t_base:.2f}")


if __name__ == "__main__":
    main()
