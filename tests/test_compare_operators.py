"""`compare.across=operators` (stages/compare_operators.py): the ttc runs of every project evaluated on
the same held-out ICs in one table, a row per (project, operator, loss, rollout, selector), each
against its own baseline; a run on other ICs is left out."""

from __future__ import annotations

import dataclasses

import pytest

from ttclab.config import ConfigError
from ttclab.models.upt import UPTConfig
from ttclab.project import load_project
from ttclab.stages import Context
from ttclab.stages import compare_operators
from ttclab.tracking.store import Tracker


def table(tracker, run_id) -> list[dict[str, str]]:
    """compare.md's rows as {column: cell}."""
    lines = (tracker.artifact_dir(run_id) / "compare.md").read_text().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]
            if line.startswith("|")]


@pytest.mark.slow
def test_one_table_holds_every_operator_on_the_same_ics_and_leaves_other_ics_out(isolated_tracking,
                                                                                  tiny_project, tiny_data_file):
    fno = tiny_project("euler1d", "train.epochs=1", "ttc.reward=baseline", "ttc.branching=2",
                       f"data.path={tiny_data_file()}")
    upt = dataclasses.replace(fno, name="tiny_upt", model=UPTConfig(dim=8, tokens=4, heads=2, approx_layers=1))
    inverse = dataclasses.replace(upt, train=dataclasses.replace(upt.train, loss="upt_inverse"))
    latent = dataclasses.replace(inverse, ttc=dataclasses.replace(upt.ttc, reward="arm", rollout="latent"))
    other_ics = dataclasses.replace(fno, ttc=dataclasses.replace(fno.ttc, n_ics=1))  # 1 of the 2 test ICs
    tracker = Tracker(isolated_tracking)
    ctx = Context(tracker, progress=False)
    ids = {name: ctx.run("ttc", c)[0] for name, c in
           (("fno", fno), ("upt", upt), ("inverse", inverse), ("latent", latent), ("other", other_ics))}
    across = dataclasses.replace(fno, compare=dataclasses.replace(fno.compare, across="operators"))
    compare_id, _ = ctx.run("compare", across)

    tags = tracker.run_info(compare_id).data.tags
    assert set(tags["ttclab.compared_runs"].split(",")) == {ids[n] for n in ("fno", "upt", "inverse", "latent")}
    # Not the run on one IC; every row its own legend entry, though both UPT baselines are "ttc · baseline · N2".
    assert len(set(tags["ttclab.compared_names"].split(" | "))) == 4
    assert tracker.run_info(compare_id).info.run_name.startswith("compare · operators · ")
    rows = table(tracker, compare_id)
    got = [(r["project"], r["operator"], r["loss"], r["rollout"], r["selector"]) for r in rows]
    assert got == [("euler1d", "fno", "unrolled_mse", "physical", "baseline"),  # cfg's own project first
                   ("tiny_upt", "upt", "unrolled_mse", "physical", "baseline"),
                   ("tiny_upt", "upt", "upt_inverse", "latent", "arm"),
                   ("tiny_upt", "upt", "upt_inverse", "physical", "baseline")]
    trains = {(r.data.tags["ttclab.project"], r.data.params["train.loss"]): r.data.metrics
              for r in tracker.runs({"ttclab.stage": "train"})}
    fno_metrics = tracker.run_info(ids["fno"]).data.metrics
    final = max(int(k.rsplit("h", 1)[1]) for k in fno_metrics if k.startswith("rollout_mse/h"))
    for row, name in zip(rows, ("fno", "upt", "latent", "inverse")):
        m = tracker.run_info(ids[name]).data.metrics
        assert row[f"MSE h{final}"] == f"{m[f'rollout_mse/h{final}']:.3e}"
        assert row[f"nRMSE h{final}"] == f"{m[f'rollout_nrmse/h{final}']:.4f}"
        assert row["SampleGain mean %"] == f"{m['sample_gain/mean']:+.1f}"  # against its own operator's baseline
        train = trains[row["project"], row["loss"]]
        assert row["params"] == f"{train['model/n_params']:.0f}" and row["train s"] == f"{train['train/wall_s']:.1f}"
    assert rows[0]["SampleGain mean %"] == "+0.0"  # a baseline is its own baseline
    assert rows[0]["params"] != rows[1]["params"]
    # The default mode still tables one project's comparison key only.
    (plain,) = table(tracker, ctx.run("compare", fno)[0])
    assert plain["selector"] == "baseline" and "operator" not in plain
    # Two candidate seeds of one set-up make one row with both seeds' runs.
    seed1 = ctx.run("ttc", dataclasses.replace(upt, sampling=dataclasses.replace(upt.sampling, seed=1)))[0]
    setups, rows, notes = compare_operators.collect(tracker, across)
    plain_upt = [r[3] for s, r in zip(setups, rows) if s[:3] == ("tiny_upt", "upt", "unrolled_mse")]
    assert plain_upt == [[seed1, ids["upt"]]]
    assert not notes
    # Another N on the same ICs: the row shows the newest setting and says what it left out.
    n3 = ctx.run("ttc", dataclasses.replace(fno, ttc=dataclasses.replace(fno.ttc, branching=3)))[0]
    setups, rows, notes = compare_operators.collect(tracker, across)
    assert rows[0][1] == n3 and len(rows) == 4
    assert notes == [f"euler1d · fno · unrolled_mse · physical · baseline: 1 finished run(s) under other settings "
                     f"(N, K, sampler, training...) left out; the row holds the newest run's settings, "
                     f"ttc · baseline · N3 ({n3})"]


def test_an_unknown_compare_mode_is_one_line_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"compare.across='models' is not one of 'selectors', 'operators'") as err:
        load_project("projects/euler1d.yaml", ["compare.across=models"])
    assert "\n" not in str(err.value)


def test_dashboard_columns_are_as_wide_as_their_longest_word():
    """Plotly wraps table cells at spaces only: a column narrower than its longest word cuts it off."""
    from ttclab.tracking.compare_figures import column_widths

    widths = column_widths(["project", "nRMSE h1", ""], [["euler1d_upt", "0.0120", "ttc · baseline · N5"]])
    assert widths == [len("euler1d_upt") + 2, len("0.0120") + 2, len("baseline") + 2]
    assert column_widths(["a"], [["x" * 40]]) == [26]  # capped: one huge word is cut, the page stays bounded
