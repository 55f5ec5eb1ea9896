"""A deep ensemble's missing members, trained in parallel processes when cores allow (issue 12).

Sampler `ensemble` needs M `train` runs (seeds seed .. seed + M - 1, sampling/ensemble.py). get-or-run
would train the missing ones one after another in this process; with c free cores, `train_missing`
first starts min(c, missing) `python -m ttclab train` processes at a time, each on its share of the
cores, so the later get-or-run finds them finished. A member whose process fails is simply trained
again in this process by get-or-run, which then reports its error as any stage would. Under torchrun,
with one core or one missing member there is nothing to gain and it does nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from ..process import Terminated
from ..training import distributed
from . import STAGES


def missing(cfgs: list, ctx) -> list:
    key = STAGES.get("train").key
    return [c for c in cfgs if ctx.tracker.find(c.name, "train", c.key(*key)) is None]


def train_missing(cfgs: list, ctx) -> None:
    todo = missing(cfgs, ctx)
    cores = len(os.sched_getaffinity(0))
    slots = min(len(todo), cores)
    if slots < 2 or distributed.launched():
        return
    if not cfgs[0].data.path and "data" not in ctx.inputs:
        ctx.upstream("generate", cfgs[0])  # once, before the members race for it
    if ctx.progress:
        print(f"[ttclab] training ensemble members (seeds {', '.join(str(c.seed) for c in todo)}) in "
              f"{slots} parallel processes")
    env = {**os.environ, "MLFLOW_TRACKING_URI": ctx.tracker.uri, "TTCLAB_THREADS": str(max(1, cores // slots))}
    inputs = [a for name, uri in ctx.inputs.items() if name == "data" for a in ("--input", f"data={uri}")]
    with tempfile.TemporaryDirectory(prefix="ttclab-members-") as tmp:
        for i in range(0, len(todo), slots):
            procs = []
            for cfg in todo[i : i + slots]:
                path = Path(tmp) / f"member_s{cfg.seed}.yaml"
                path.write_text(yaml.safe_dump(cfg.to_dict()))  # the member's full config, --set values included
                argv = [sys.executable, "-m", "ttclab", "train", str(path), "--quiet", "--device", str(ctx.device), *inputs]
                procs.append(subprocess.Popen(argv, env=env))
            try:
                for proc in procs:
                    proc.wait()
            except KeyboardInterrupt as err:  # Ctrl-C reached the children too; SIGTERM only this process
                for proc in procs:
                    if isinstance(err, Terminated) and proc.poll() is None:
                        proc.terminate()
                for proc in procs:
                    proc.wait()
                raise
