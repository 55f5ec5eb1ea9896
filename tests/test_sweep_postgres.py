"""A sweep on PostgreSQL storage (the multi-machine set-up): a trial whose worker on another
machine stopped sending heartbeats is failed and retried, and the sweep completes on the RDB study.

Starts a throwaway PostgreSQL cluster on loopback (tests/pgcluster.py). Skips when the server
binaries or psycopg2 are missing; .ci/run installs both so it runs in CI.
"""

from __future__ import annotations

import time

import pytest
from pgcluster import cluster
from test_sweep import child_runs, parent_of, write_spec

from ttclab.sweep import load_spec, run_sweep
from ttclab.sweep.study import StaleTrialHandler, open_storage, open_study
from ttclab.tracking.store import Tracker


@pytest.fixture
def postgres_url():
    with cluster() as url:
        yield f"{url}/postgres"


def test_postgres_heartbeat_retry(tmp_path, project, isolated_tracking, postgres_url,
                                                  monkeypatch):
    from ttclab.sweep import study as study_module

    monkeypatch.setattr(study_module, "HEARTBEAT_S", 1)
    monkeypatch.setattr(study_module, "GRACE_S", 1)
    spec_path = write_spec(tmp_path, project, name="tiny-pg")
    tracker = Tracker(isolated_tracking)
    spec = load_spec(spec_path)
    storage = open_storage(spec, postgres_url, StaleTrialHandler(tracker, spec.name))
    study = open_study(spec, storage)
    trial = study.ask()  # a trial of a worker on another machine that went silent
    lr = trial.suggest_float("train.lr", 1.0e-4, 1.0e-2, log=True)
    trial.set_user_attr("ttclab.host", "elsewhere")
    storage.record_heartbeat(storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(spec.name), 0))
    time.sleep(2.5)

    run_sweep(spec_path, n_trials=2, storage=postgres_url, quiet=True)
    trials = open_study(spec, storage).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert trials[1].params["train.lr"] == lr and trials[1].system_attrs["failed_trial"] == 0
    runs = child_runs(tracker, parent_of(tracker, "tiny-pg").info.run_id)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
