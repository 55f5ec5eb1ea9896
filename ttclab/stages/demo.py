"""Stage `demo`: the whole pipeline on one project, ending with the comparison table.

generate -> train -> build_prm -> train_prm (each reused when a finished run of the same config
exists) -> ttc for every selector, plus the conservation projection stacked on baseline, ARM and
PRM -> compare. The ttc and compare runs are nested under the demo run.
"""

from __future__ import annotations

import dataclasses

from . import Context, stage

SELECTORS = ("baseline", "random", "ensemble", "arm", "prm", "oracle")
PROJECTED = ("baseline", "arm", "prm")


def variant(cfg, reward: str, project: bool):
    return dataclasses.replace(cfg, ttc=dataclasses.replace(cfg.ttc, reward=reward, project_conservation=project))


@stage("demo", key=("problem", "data", "model", "train", "seed", "sampling", "ttc", "arm"))
def demo(cfg, ctx, run):
    """Whole pipeline: data, operator, PRM, every TTC selector with controls, comparison table."""
    for upstream in ("train", "train_prm"):
        ctx.upstream(upstream, cfg)
    child = Context(ctx.tracker, ctx.device, ctx.progress, ctx.inputs, parent=run.id)
    rows = [(r, False) for r in SELECTORS] + [(r, True) for r in PROJECTED]
    for reward, project in rows:
        child.run("ttc", variant(cfg, reward, project))
    _, out = child.run("compare", cfg)
    print("[ttclab] open the runs side by side: `ttclab ui " + f"projects/{cfg.name}.yaml`")
    return out
