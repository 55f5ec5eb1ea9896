"""The tracker of a torchrun rank other than 0: it reads the store like rank 0 but writes nothing.

Every rank runs the same stage so that each can train its shard (training/distributed.py); rank 0
alone creates the MLflow run, logs and writes artifacts. A follower resolves its inputs from the
same store; an upstream result that does not exist yet is being produced by rank 0 (get-or-run),
so `find` waits for it instead of running the upstream stage a second time.
"""

from __future__ import annotations

import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path


class SilentRun:
    """A Run that records nothing (the rank-0 run holds the metrics and artifacts)."""

    id = None

    def log(self, metrics, step=0): pass

    def flush(self): pass

    def params(self, params): pass

    def tags(self, tags): pass

    def artifact(self, path, subdir=None): pass

    def dataset(self, path, split, context): pass

    def text(self, text, name): pass

    def report(self, key, value, step): pass

    def artifact_dir(self) -> Path:
        return Path(tempfile.gettempdir()) / "ttclab-follower"


class Follower:
    """Wraps rank 0's kind of Tracker: reads pass through, writes are dropped."""

    POLL_S = 0.5

    def __init__(self, tracker):
        self.tracker = tracker

    def __getattr__(self, name):  # find's look-ups, artifact_dir, resolve, lock, uri, ...
        return getattr(self.tracker, name)

    @contextmanager
    def start(self, project, stage, **kwargs):
        yield SilentRun()

    def system_metrics(self, run_id, **kwargs):
        return nullcontext()

    def close_dead_runs(self) -> list:
        return []

    def register(self, project, kind, run_id):
        return None

    def find(self, project, stage, key):
        """The finished run rank 0 has or is producing; torchrun ends this rank if rank 0 fails."""
        while (found := self.tracker.find(project, stage, key)) is None:
            time.sleep(self.POLL_S)
        return found
