"""Stage `demo`: the whole pipeline on one project, ending with the comparison table.

generate -> train -> build_prm -> train_prm (each reused when a finished run of the same config
exists) -> ttc for every selector, plus the conservation projection stacked on baseline, ARM and
PRM -> compare. The ttc and compare runs are nested under the demo run.
"""

from __future__ import annotations

import dataclasses

from ..rewards import selector_names
from . import STAGES, stage
from .common import DATA, OPERATOR, PRM

SELECTORS = tuple(selector_names())  # every selector of the REWARDS registry, in table order
PROJECTED = ("baseline", "arm", "prm")


def variant(cfg, reward: str, project: bool):
    return dataclasses.replace(cfg, ttc=dataclasses.replace(cfg.ttc, reward=reward, project_conservation=project))


@stage("demo", key=("sampling", "ttc", "arm"), inputs=(DATA, OPERATOR, PRM),
       run_name=lambda cfg: f"demo · {cfg.name}")
def demo(cfg, ctx, run):
    """Whole pipeline: data, operator, PRM, every TTC selector with controls, comparison table."""
    # Upstream results first, as top-level runs; the ttc runs then find them (or use the --input ones).
    for inp in STAGES.get("demo").needed(cfg):
        ctx.input(inp.name, cfg)
    child = dataclasses.replace(ctx, parent=run.id)
    rows = [(r, False) for r in SELECTORS] + [(r, True) for r in PROJECTED]
    for reward, project in rows:
        child.run("ttc", variant(cfg, reward, project))
    _, out = child.run("compare", cfg)
    print("[ttclab] open the runs side by side: `ttclab ui " + f"projects/{cfg.name}.yaml`")
    return out
