"""A study that cannot run ends `failed` instead of burning trials without end."""
# ruff: noqa: F811 - the fixtures come from tests.test_fleet_support

from __future__ import annotations

import time

from tests.conftest import create_token
from tests.test_fleet_support import (  # noqa: F401 - fixtures
    FleetEnv,
    fleet_env,
    fleet_env_module,
    wait_until,
)

# The engine cannot load these weights: every trial fails the same way, in a second.
MISSING_WEIGHTS = {
    "source_model": "torchvision:resnet18",
    "source_weights": "/nonexistent/resnet18.pth",
}


def _user(fleet_env: FleetEnv):
    return fleet_env.client(create_token(fleet_env.database_url, scope="user", owner="fleet-tests"))


def _fail_one(client, worker_id: str, reason: str) -> dict:
    assignment = client.post("/leases", json={"worker_id": worker_id, "device": "cpu"})
    assert assignment.status_code == 201, assignment.text
    trial_id = assignment.json()["trial_id"]
    answer = client.post(f"/trials/{trial_id}/fail", json={"reason": reason, "requeue": False})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_study_fails_after_max_failed_trials_and_says_why(fleet_env: FleetEnv):
    study_id = fleet_env.create_study(
        "fails", budget={"max_trials": 10, "epochs": 2, "max_failed_trials": 3}
    )
    with fleet_env.client() as worker:
        for i in range(3):
            _fail_one(worker, f"fails-{i}", f"FileNotFoundError: weights {i}")
        assert (
            worker.post("/leases", json={"worker_id": "fails-x", "device": "cpu"}).status_code
            == 204
        )
    assert fleet_env.study_state(study_id) == "failed"
    assert fleet_env.states(study_id) == {"FAIL": 3}
    with _user(fleet_env) as user:
        study = user.get(f"/studies/{study_id}").json()
    assert study["state"] == "failed"
    assert study["failed_trials"] == 3
    assert study["fail_reason"] == "FileNotFoundError: weights 2"


def test_a_failed_study_resumes_with_its_count_reset(fleet_env: FleetEnv):
    study_id = fleet_env.create_study(
        "resumes", budget={"max_trials": 10, "epochs": 2, "max_failed_trials": 1}
    )
    with fleet_env.client() as worker:
        _fail_one(worker, "resumes-0", "RuntimeError: no GPU")
        assert fleet_env.study_state(study_id) == "failed"
        with _user(fleet_env) as user:
            resumed = user.post(f"/studies/{study_id}/resume")
            assert resumed.status_code == 200, resumed.text
            assert (resumed.json()["state"], resumed.json()["failed_trials"]) == ("running", 0)
            assert resumed.json()["fail_reason"] is None
        _fail_one(worker, "resumes-1", "RuntimeError: no GPU")
        assert fleet_env.study_state(study_id) == "failed"
        with _user(fleet_env) as user:
            assert user.post(f"/studies/{study_id}/stop").json()["state"] == "stopped"


def test_a_running_trial_of_a_failed_study_is_told_to_stop(fleet_env: FleetEnv):
    study_id = fleet_env.create_study(
        "stops", budget={"max_trials": 10, "epochs": 2, "max_failed_trials": 1}
    )
    with fleet_env.client() as worker:
        other = worker.post("/leases", json={"worker_id": "stops-a", "device": "cpu"}).json()
        _fail_one(worker, "stops-b", "OSError: disk full")
        ack = worker.post(f"/trials/{other['trial_id']}/heartbeat", json={}).json()
    assert fleet_env.study_state(study_id) == "failed"
    assert ack["stop"] is True
    assert "failed" in ack["reason"]


def test_retried_failures_do_not_count(fleet_env: FleetEnv):
    study_id = fleet_env.create_study(
        "retried", budget={"max_trials": 10, "epochs": 2, "max_failed_trials": 1}
    )
    with fleet_env.client() as worker:
        assignment = worker.post("/leases", json={"worker_id": "retried-0", "device": "cpu"})
        trial_id = assignment.json()["trial_id"]
        worker.post(f"/trials/{trial_id}/fail", json={"reason": "worker interrupted"})
    assert fleet_env.study_state(study_id) == "running"


def test_a_real_worker_on_a_study_that_cannot_run_ends_it_failed_without_spinning(
    fleet_env: FleetEnv,
):
    study_id = fleet_env.create_study(
        "cannot-run",
        budget={"max_trials": 4, "epochs": 2, "max_retries": 0, "max_failed_trials": 4},
        **MISSING_WEIGHTS,
    )
    proc = fleet_env.start_worker(objective="engine", name="cannot-run")
    try:
        wait_until(
            lambda: fleet_env.study_state(study_id) == "failed",
            timeout_s=120,
            what="the study to fail",
        )
        time.sleep(1.0)
        assert fleet_env.states(study_id) == {"FAIL": 4}
        log = fleet_env.worker_log(proc)
        # The same error from the third failure on: the worker waits and says why, once a wait.
        assert "3 trials in a row failed with the same error" in log, log[-3000:]
        assert "resnet18.pth" in log
        assert log.count("Traceback") == 1, log[-3000:]
    finally:
        proc.kill()
        proc.wait()
    with _user(fleet_env) as user:
        study = user.get(f"/studies/{study_id}").json()
    assert study["state"] == "failed"
    assert "resnet18.pth" in study["fail_reason"]
