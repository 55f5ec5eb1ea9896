"""Stage `generate`: trajectories from the problem's reference solver, in PDEBench's HDF5 layout."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..data import pdebench
from ..data.datasets import channel_stats, check_file, make_splits
from ..problems import make_problem
from . import stage
from .common import DATA_ARTIFACT


CHUNK = 32  # trajectories per read when checking an external file (PDEBench files hold 10^4)


def conservation_drift(problem, fields: np.ndarray) -> dict[str, float]:
    """Max over trajectories and time of |Q(t) - Q(0)| / integral |q(0)| for each conserved Q."""
    u = torch.from_numpy(fields).double()
    totals, scale = problem.conserved(u), problem.conserved_scale(u[:, :1])
    return {k: float(((q - q[:, :1]).abs() / scale[k]).max()) for k, q in totals.items()}


def check_external(problem, cfg, run) -> None:
    """An external file: physics checked against the project, then the conservation drift of the
    trajectories the project reads, in chunks. Float32 files drift ~1e-7 in mass and ~1e-4 in
    energy when gamma is right; a wrong gamma shows up as a much larger energy drift."""
    with pdebench.PDEBenchFile(cfg.data.path, problem) as f:
        found = check_file(f, problem, cfg.data)
        n = min(f.n_trajectories, cfg.data.n_trajectories)
        drift: dict[str, float] = {}
        for start in range(0, n, CHUNK):
            chunk = f.read(range(start, min(start + CHUNK, n)), cfg.data.t_stride, cfg.data.x_stride)
            for k, v in conservation_drift(problem, chunk).items():
                drift[k] = max(drift.get(k, 0.0), v)
        run.log({"data/n_trajectories": f.n_trajectories, "data/n_snapshots": f.n_snapshots,
                 **{f"data/conservation/{k}": v for k, v in drift.items()}})
    run.tags({"ttclab.data": str(Path(cfg.data.path).resolve()), "physics.dx": found["dx"]})


@stage("generate", key=("problem", "data"), run_name=lambda cfg: f"generate · {cfg.problem.type}")
def generate(cfg, ctx, run):
    """Generate the data set (or check an existing PDEBench file named by data.path)."""
    problem = make_problem(cfg.problem)
    if cfg.data.path:
        check_external(problem, cfg, run)
        return {"path": Path(cfg.data.path)}
    n = cfg.data.n_trajectories
    start = time.perf_counter()
    traj = problem.solve(n, cfg.data.seed, progress=ctx.progress)
    seconds = time.perf_counter() - start
    splits = make_splits(n, cfg.data)
    mean, std = channel_stats(traj.fields[splits["train"]])
    meta = {f"split_{k}": v for k, v in splits.items()} | {"norm_mean": mean, "norm_std": std}
    drift = conservation_drift(problem, traj.fields)
    cells = n * (traj.fields.shape[1] - 1) * int(np.prod(problem.shape))
    run.log({"data/n_trajectories": n, "data/n_snapshots": traj.fields.shape[1], "data/solver_s": seconds,
             "data/cell_snapshots_per_s": cells / seconds,
             **{f"data/conservation/{k}": v for k, v in drift.items()}})
    with tempfile.TemporaryDirectory() as tmp:
        path = pdebench.write(Path(tmp) / f"{problem.name}.h5", problem, traj, meta)
        run.artifact(path, DATA_ARTIFACT)
    if ctx.progress:
        print(f"[ttclab] generated {n} {problem.name} trajectories in {seconds:.1f}s "
              f"(max conservation drift {max(drift.values()):.1e})")
    return {"path": run.artifact_dir() / DATA_ARTIFACT / f"{problem.name}.h5"}
