"""Two API processes behind one database; one is SIGKILLed mid-run (mid-lease, as
workers lease all the time). Workers given both URLs fail over to the other and
nothing is lost: the budget is exact, every trial completes once, and no RUNNING
trial is left without an active lease."""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import start_api_server
from tests.test_fleet_support import LEASE_TIMINGS, FleetEnv, make_fleet_env, wait_until

# Long enough that a worker's lease is not reaped while it fails over.
TIMINGS = {**LEASE_TIMINGS, "grace_period_s": 6}


@pytest.fixture
def fleet(tmp_path: Path, migrated_pg_url: str) -> Iterator[FleetEnv]:
    yield from make_fleet_env(tmp_path, migrated_pg_url, **TIMINGS)


def ghosts(env: FleetEnv) -> list:
    with env.engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT t.trial_id FROM trials t LEFT JOIN tf_leases l "
                "ON l.trial_id = t.trial_id AND l.state = 'active' "
                "WHERE t.state = 'RUNNING' AND l.trial_id IS NULL"
            )
        ).all()


def test_workers_fail_over_when_one_api_process_is_killed(fleet: FleetEnv, tmp_path: Path):
    second = start_api_server(fleet.database_url, tmp_path, **TIMINGS)
    try:
        budget = 40
        study_id = fleet.create_study("failover", budget={"max_trials": budget, "epochs": 1})
        both = f"{fleet.api.url},{second.url}"
        workers = [
            fleet.start_worker("--idle-exit", "3", epoch_s=0.02, service_url=both) for _ in range(6)
        ]
        wait_until(
            lambda: fleet.states(study_id).get("COMPLETE", 0) >= 8,
            timeout_s=120,
            what="8 trials through the first API process",
            every_s=0.05,
        )
        fleet.api.proc.send_signal(signal.SIGKILL)  # every worker talks to it first
        fleet.api.proc.wait()
        assert fleet.wait_workers(workers, timeout_s=180) == [0] * 6
    finally:
        second.stop()
    trials = fleet.trials(study_id)
    assert Counter(t.state.name for t in trials) == {"COMPLETE": budget}
    leases = fleet.leases(study_id)
    assert Counter(lease.state for lease in leases) == {"completed": budget}
    assert ghosts(fleet) == []
    assert fleet.study_state(study_id) == "completed"
    logs = "".join(fleet.worker_log(w) for w in workers)
    assert "failing over to the TuneFleet API at " + second.url in logs
