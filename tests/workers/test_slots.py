"""`tunefleet worker --slots N` against a real API process: N trials at once, per-trial ends."""
# ruff: noqa: F811 - the fixtures come from tests.test_fleet_support

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter

from tests.conftest import REPO_ROOT, subprocess_env
from tests.test_fleet_support import (  # noqa: F401 - fixtures
    FleetEnv,
    fleet_env,
    fleet_env_module,
    wait_until,
)
from workers.slots import slot_trial_caps


def active_leases(env: FleetEnv, study_id: int, count: int):
    def find():
        rows = [r for r in env.leases(study_id) if r.state == "active"]
        return rows if len(rows) >= count else None

    return find


def test_two_slots_run_two_trials_at_once_each_with_its_own_lease(fleet_env: FleetEnv):
    study_id = fleet_env.create_study("slots", budget={"max_trials": 10, "epochs": 3})
    worker = fleet_env.start_worker("--slots", "2", "--max-trials", "4", epoch_s=0.3)
    assert fleet_env.wait_workers([worker], timeout_s=90) == [0], fleet_env.worker_log(worker)
    # --max-trials is the worker's: its slots ran 4 in all, then exited.
    assert Counter(t.state.name for t in fleet_env.trials(study_id)) == {"COMPLETE": 4}
    leases = fleet_env.leases(study_id)
    assert {row.state for row in leases} == {"completed"}
    assert Counter(row.worker_id for row in leases) == {
        f"{worker.name}-slot0": 2,
        f"{worker.name}-slot1": 2,
    }
    # A trial of one slot ran while one of the other did: their leases overlap in time.
    slot0 = [r for r in leases if r.worker_id.endswith("slot0")]
    slot1 = [r for r in leases if r.worker_id.endswith("slot1")]
    assert any(a.leased_at < b.finished_at and b.leased_at < a.finished_at
               for a in slot0 for b in slot1)  # fmt: skip


def test_first_sigterm_lets_every_slot_finish_its_trial_then_exit(fleet_env: FleetEnv):
    study_id = fleet_env.create_study("slots-sigterm", budget={"max_trials": 10, "epochs": 8})
    worker = fleet_env.start_worker("--slots", "2", epoch_s=0.4)
    running = wait_until(active_leases(fleet_env, study_id, 2), timeout_s=60, what="2 leases")
    worker.send_signal(signal.SIGTERM)
    leased_before = {r.trial_id for r in fleet_env.leases(study_id)}
    assert fleet_env.wait_workers([worker], timeout_s=30) == [0], fleet_env.worker_log(worker)
    assert {fleet_env.trial(r.trial_id).state.name for r in running} == {"COMPLETE"}
    # Nothing leased after the signal.
    assert {r.trial_id for r in fleet_env.leases(study_id)} == leased_before


def test_second_sigterm_hands_every_slots_trial_back_at_once(fleet_env: FleetEnv):
    study_id = fleet_env.create_study("slots-twice", budget={"max_trials": 4, "epochs": 20})
    worker = fleet_env.start_worker("--slots", "2", epoch_s=0.5)
    running = wait_until(active_leases(fleet_env, study_id, 2), timeout_s=60, what="2 leases")
    worker.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    worker.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert fleet_env.wait_workers([worker], timeout_s=15) == [0], fleet_env.worker_log(worker)
    assert time.monotonic() - started < 8  # did not wait for the 10 s trials
    for row in running:
        interrupted = fleet_env.trial(row.trial_id)
        assert interrupted.state.name == "FAIL"
        assert interrupted.user_attrs["fail_reason"] == "worker interrupted"
    retries = [t for t in fleet_env.trials(study_id) if t.state.name == "WAITING"]
    assert sorted(t.user_attrs["retry_of"] for t in retries) == sorted(
        fleet_env.trial(r.trial_id).number for r in running
    )


def test_a_slot_fails_only_its_own_trial(fleet_env: FleetEnv):
    study_id = fleet_env.create_study("slots-fail", budget={"max_trials": 2, "epochs": 1})
    worker = fleet_env.start_worker("--slots", "2", "--max-trials", "2", objective="failing")
    assert fleet_env.wait_workers([worker], timeout_s=60) == [0], fleet_env.worker_log(worker)
    trials = fleet_env.trials(study_id)
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]
    for trial in trials:
        assert trial.system_attrs["tunefleet:fail_detail"] == (
            f"ValueError: no such layer for trial {trial.number}"
        )


def test_max_trials_is_shared_out_between_the_slots():
    assert slot_trial_caps(5, 2) == [3, 2]
    assert slot_trial_caps(1, 3) == [1, 0, 0]
    assert slot_trial_caps(None, 2) == [None, None]


def test_slots_out_of_range_is_a_usage_error():
    done = subprocess.run(
        [sys.executable, "-m", "workers", "--slots", "0"],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--slots" in done.stderr
