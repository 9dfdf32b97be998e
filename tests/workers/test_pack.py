"""`tunefleet worker --pack K` against a real API process: batched leases, per-trial ends."""
# ruff: noqa: F811 - the fixtures come from tests.test_fleet_support

from __future__ import annotations

from collections import Counter

from tests.test_fleet_support import (  # noqa: F401 - fixtures
    FleetEnv,
    fleet_env,
    fleet_env_module,
)


def test_a_packed_worker_leases_in_batches_and_ends_each_trial_on_its_own(fleet_env: FleetEnv):
    study_id = fleet_env.create_study("packed", budget={"max_trials": 10, "epochs": 2})
    worker = fleet_env.start_worker("--pack", "4", "--idle-exit", "2", epoch_s=0.01)
    assert fleet_env.wait_workers([worker], timeout_s=90) == [0], fleet_env.worker_log(worker)
    trials = fleet_env.trials(study_id)
    assert Counter(t.state.name for t in trials) == {"COMPLETE": 10}
    assert all(sorted(t.intermediate_values) == [1, 2] for t in trials)
    leases = fleet_env.leases(study_id)
    # Leased in batches of 4, 4 and 2: three lease times, each trial its own lease.
    assert len({row.leased_at for row in leases}) == 3
    assert {row.state for row in leases} == {"completed"}


def test_a_packed_worker_fails_only_the_trial_that_raised(fleet_env: FleetEnv):
    study_id = fleet_env.create_study("packed-fail", budget={"max_trials": 3, "epochs": 1})
    worker = fleet_env.start_worker(
        "--pack", "3", "--max-trials", "3", objective="failing", epoch_s=0.01
    )
    assert fleet_env.wait_workers([worker], timeout_s=60) == [0], fleet_env.worker_log(worker)
    states = Counter(t.state.name for t in fleet_env.trials(study_id))
    assert states == {"FAIL": 3}
    assert {row.state for row in fleet_env.leases(study_id)} == {"failed"}
