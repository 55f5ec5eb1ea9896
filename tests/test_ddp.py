"""Data-parallel training under torchrun (training/distributed.py, loop.fit): 2 gloo ranks with
per-process batch b follow the loss curve of 1 process with batch 2b, one MLflow run is made, and
a resumed data-parallel run continues exactly like a resumed single-process one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from conftest import DEFAULT_PROJECT, TINY_GRIDS, TINY_OVERRIDES
from ttclab.config import set_dotted
from ttclab.training import distributed

# Float tolerance of the comparison: the two runs differ only in the summation order of the
# gradient (two half-batch means averaged vs one mean) and of the logged loss.
RTOL = 1e-4


@pytest.mark.parametrize("n_batches", range(1, 8))
@pytest.mark.parametrize("world", [1, 2, 3])
def test_shard_gives_every_rank_the_same_number_of_steps_and_covers_each_batch(monkeypatch, n_batches, world):
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    shards = []
    for r in range(world):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        shards.append(list(distributed.shard(iter(range(n_batches)), n_batches)))
    rounds = -(-n_batches // world)
    assert all(len(s) == rounds for s in shards)
    assert sorted({b for s in shards for b in s}) == list(range(n_batches))
    assert [s[0] for s in shards] == [r % n_batches for r in range(world)]


@pytest.fixture
def ddp_project(tmp_path, isolated_tracking):
    """The tiny project without a data file, so the first data-parallel run also generates (rank 0
    runs generate on demand while rank 1 waits for its result)."""
    raw: dict = {"base": str(DEFAULT_PROJECT), "problem": {"type": "euler1d", **TINY_GRIDS["euler1d"]}}
    for key, value in {**TINY_OVERRIDES, "train.epochs": 2}.items():
        set_dotted(raw, key, value)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def ttclab(*args, torchrun: bool = False):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "ttclab"]
    cmd = (launcher if torchrun else [sys.executable, "-m", "ttclab"]) + [str(a) for a in args] + ["--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "TTCLAB_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def curves(tracker, run_id):
    return {k: [v for _, v in tracker.history(run_id, k)] for k in ("train/loss", "val/loss")}


@pytest.mark.slow
def test_two_ranks_with_batch_b_follow_one_process_with_batch_2b_and_resume(ddp_project, isolated_tracking):
    from ttclab.tracking.store import Tracker

    tracker = Tracker(isolated_tracking)
    ttclab("train", ddp_project, "--nproc", 2, "--set", "train.batch_size=4")  # the --nproc shortcut
    (ddp,) = tracker.runs({"ttclab.stage": "train"})  # exactly one run from two processes
    assert len(tracker.runs({"ttclab.stage": "generate"})) == 1 and ddp.info.status == "FINISHED"
    ttclab("train", ddp_project, "--set", "train.batch_size=8")
    (single,) = [r for r in tracker.runs({"ttclab.stage": "train"}) if r.info.run_id != ddp.info.run_id]
    a, b = curves(tracker, ddp.info.run_id), curves(tracker, single.info.run_id)
    assert len(a["train/loss"]) == 16 and len(a["val/loss"]) == 2  # 64 train pairs / 8 per step x 2 epochs
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=RTOL), key
    # Resume both from the same last.pt for one more epoch: plain torchrun this time.
    last = f"runs:/{ddp.info.run_id}/model/last.pt"
    ttclab("train", ddp_project, "--set", "train.batch_size=4", "--set", "train.epochs=3", "--input",
           f"resume={last}", torchrun=True)
    ttclab("train", ddp_project, "--set", "train.batch_size=8", "--set", "train.epochs=3", "--input", f"resume={last}")
    resumed = sorted(tracker.runs({"ttclab.stage": "train"}), key=lambda r: r.info.start_time)[2:]
    assert len(resumed) == 2
    a, b = (curves(tracker, r.info.run_id) for r in resumed)
    assert [s for s, _ in tracker.history(resumed[0].info.run_id, "train/loss")] == list(range(17, 25))
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=RTOL), key


@pytest.mark.slow
def test_trc_on_two_ranks_follows_one_process_with_twice_the_batch(tmp_path, isolated_tracking):
    """The controller trains through the same loop (training/loop.py:fit): 2 ranks x 8 == 1 x 16."""
    from ttclab.tracking.store import Tracker

    tiny = ["problem.n_train=48", "problem.n_val=16", "problem.n_test=24", "model.latent=16", "model.layers=1",
            "model.H_cycles=2", "model.L_cycles=1", "trc.epochs=2", "trc.log_every=1"]
    sets = [a for kv in tiny for a in ("--set", kv)]
    tracker = Tracker(isolated_tracking)
    ttclab("trc", "projects/double_integrator.yaml", *sets, "--set", "trc.batch_size=8", "--nproc", 2)
    (ddp,) = tracker.runs({"ttclab.stage": "trc"})  # one run from two processes
    ttclab("trc", "projects/double_integrator.yaml", *sets, "--set", "trc.batch_size=16")
    (single,) = [r for r in tracker.runs({"ttclab.stage": "trc"}) if r.info.run_id != ddp.info.run_id]
    assert len(tracker.runs({"ttclab.stage": "trc_data"})) == 1  # the teacher solved once, reused
    for key in ("train/loss", "val/loss"):
        a, b = ([v for _, v in tracker.history(r.info.run_id, key)] for r in (ddp, single))
        assert len(a) == (6 if key == "train/loss" else 2) and a == pytest.approx(b, rel=RTOL), key
    assert tracker.client.get_run(ddp.info.run_id).data.metrics["trc/cost_gap_pct"] == pytest.approx(
        tracker.client.get_run(single.info.run_id).data.metrics["trc/cost_gap_pct"], rel=RTOL)


@pytest.mark.slow
def test_train_prm_on_two_ranks_follows_one_process_with_twice_the_batch(ddp_project, isolated_tracking):
    """The PRM trains through the same loop: 2 ranks x 4 states == 1 x 8; upstream runs made once."""
    from ttclab.tracking.store import Tracker

    tracker = Tracker(isolated_tracking)
    ttclab("train_prm", ddp_project, "--set", "prm.epochs=2", "--set", "prm.batch_size=4", "--nproc", 2)
    (ddp,) = tracker.runs({"ttclab.stage": "train_prm"})
    ttclab("train_prm", ddp_project, "--set", "prm.epochs=2", "--set", "prm.batch_size=8")
    (single,) = [r for r in tracker.runs({"ttclab.stage": "train_prm"}) if r.info.run_id != ddp.info.run_id]
    assert [len(tracker.runs({"ttclab.stage": s})) for s in ("generate", "train", "build_prm")] == [1, 1, 1]
    for key in ("train/loss", "val/loss"):
        a, b = ([v for _, v in tracker.history(r.info.run_id, key)] for r in (ddp, single))
        assert len(a) >= 2 and a == pytest.approx(b, rel=RTOL), key
