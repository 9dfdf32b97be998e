"""Real worker processes against a real API: the loop, signals, dead workers."""
# ruff: noqa: F811 - the fixtures come from tests.test_fleet_support

from __future__ import annotations

import signal
import time

from tests.test_fleet_support import (  # noqa: F401 - fixtures
    REAP_DEADLINE_S,
    FleetEnv,
    fleet_env,
    fleet_env_module,
    wait_until,
)


def active_lease(env: FleetEnv, study_id: int, worker: str):
    """The worker's active lease, once it has one."""

    def find():
        rows = [r for r in env.leases(study_id) if r.worker_id == worker and r.state == "active"]
        return rows[0] if rows else None

    return find


def test_worker_runs_trials_until_max_trials_then_exits(fleet_env: FleetEnv):
    study_id = fleet_env.create_study("max-trials")
    worker = fleet_env.start_worker("--max-trials", "2")
    assert fleet_env.wait_workers([worker], timeout_s=60) == [0]
    trials = fleet_env.trials(study_id)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert {t.user_attrs["worker_id"] for t in trials} == {worker.name}
    assert all(t.intermediate_values.keys() == {1, 2, 3} for t in trials)
    assert all(t.user_attrs["objective"] == "quadratic" for t in trials)
    assert "2 trials" in fleet_env.worker_log(worker)


def test_idle_worker_exits_after_idle_exit(fleet_env: FleetEnv):
    started = time.monotonic()
    worker = fleet_env.start_worker("--idle-exit", "1")
    assert fleet_env.wait_workers([worker], timeout_s=30) == [0]
    assert time.monotonic() - started >= 1
    assert "no work for" in fleet_env.worker_log(worker)


def test_a_worker_with_a_bad_token_exits_with_the_reason(fleet_env: FleetEnv):
    worker = fleet_env.start_worker(token="tf_not-a-real-token")
    assert fleet_env.wait_workers([worker], timeout_s=30) == [1]
    assert "invalid token" in fleet_env.worker_log(worker)


def test_a_worker_whose_token_is_revoked_stops_with_exit_1_saying_so(fleet_env: FleetEnv):
    from service import auth
    from service.config import load_settings
    from service.db import session_scope
    from service.models import ApiToken

    with session_scope(fleet_env.engine) as session:
        issued = auth.issue_token(
            session, scope="worker", owner="fleet", secret=load_settings().token_secret
        )
        token, token_id = issued.value, issued.row.id
    study_id = fleet_env.create_study("revoked", budget={"max_trials": 50, "epochs": 40})
    worker = fleet_env.start_worker(token=token, name="revoked-worker", epoch_s=0.05)
    wait_until(active_lease(fleet_env, study_id, "revoked-worker"), timeout_s=30, what="a lease")
    with session_scope(fleet_env.engine) as session:
        auth.revoke_token(session, token_id)
        assert session.get(ApiToken, token_id).revoked_at is not None
    assert fleet_env.wait_workers([worker], timeout_s=30) == [1]
    log = fleet_env.worker_log(worker)
    assert "the service refused this worker: token revoked at" in log
    assert "Traceback" not in log


def test_a_trial_that_raises_is_failed_without_its_message_and_the_worker_goes_on(
    fleet_env: FleetEnv,
):
    study_id = fleet_env.create_study("raises")
    worker = fleet_env.start_worker("--max-trials", "2", objective="failing")
    assert fleet_env.wait_workers([worker], timeout_s=60) == [0]
    trials = fleet_env.trials(study_id)
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]  # a broken trial is not retried
    for trial in trials:
        # Any exception but the engine's may name what the worker found: the owner sees
        # its type only; the message goes to the admin-only detail and the worker's log.
        assert trial.user_attrs["fail_reason"].startswith(
            "worker_error: the trial raised ValueError"
        )
        assert "no such layer" not in trial.user_attrs["fail_reason"]
        assert trial.system_attrs["tunefleet:fail_detail"] == (
            f"ValueError: no such layer for trial {trial.number}"
        )


def test_a_nan_result_fails_the_trial_with_a_reason(fleet_env: FleetEnv):
    study_id = fleet_env.create_study("nan-result")
    worker = fleet_env.start_worker("--max-trials", "1", objective="not_a_number")
    assert fleet_env.wait_workers([worker], timeout_s=60) == [0]
    (trial,) = fleet_env.trials(study_id)
    assert trial.state.name == "FAIL"
    assert "non-finite" in trial.user_attrs["fail_reason"]


def test_first_sigterm_finishes_the_current_trial_then_exits(fleet_env: FleetEnv):
    study_id = fleet_env.create_study("sigterm-once")
    worker = fleet_env.start_worker(epoch_s=0.4)
    lease = wait_until(active_lease(fleet_env, study_id, worker.name), timeout_s=30, what="a lease")
    worker.send_signal(signal.SIGTERM)
    assert fleet_env.wait_workers([worker], timeout_s=30) == [0]
    assert fleet_env.trial(lease.trial_id).state.name == "COMPLETE"
    assert [r.trial_id for r in fleet_env.leases(study_id)] == [lease.trial_id]


def test_second_sigterm_hands_the_trial_back_and_it_is_requeued(fleet_env: FleetEnv):
    study_id = fleet_env.create_study("sigterm-twice", budget={"max_trials": 3, "epochs": 20})
    worker = fleet_env.start_worker(epoch_s=0.5)
    lease = wait_until(active_lease(fleet_env, study_id, worker.name), timeout_s=30, what="a lease")
    worker.send_signal(signal.SIGTERM)
    time.sleep(0.2)  # two separate signals, as from a supervisor that insists
    worker.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert fleet_env.wait_workers([worker], timeout_s=10) == [0]
    assert time.monotonic() - started < 5  # did not wait for the 10 s trial

    interrupted = fleet_env.trial(lease.trial_id)
    assert interrupted.state.name == "FAIL"
    assert interrupted.user_attrs["fail_reason"] == "worker interrupted"
    (retry,) = [t for t in fleet_env.trials(study_id) if t.state.name == "WAITING"]
    assert retry.user_attrs["retry_of"] == interrupted.number
    assert retry.system_attrs["fixed_params"] == interrupted.params


def test_dead_workers_trials_are_reaped_requeued_once_and_the_retries_complete(
    fleet_env: FleetEnv,
):
    study_id = fleet_env.create_study("killed", budget={"max_trials": 2, "epochs": 10})
    # One dies right after its lease, before any heartbeat; one in the middle of a trial.
    early = fleet_env.start_worker(epoch_s=0.3, name="dies-at-once")
    mid = fleet_env.start_worker(epoch_s=0.3, name="dies-mid-trial")
    early_lease = wait_until(
        active_lease(fleet_env, study_id, early.name), timeout_s=30, what="a lease", every_s=0.01
    )
    early.kill()
    mid_lease = wait_until(
        active_lease(fleet_env, study_id, mid.name), timeout_s=30, what="a lease"
    )
    wait_until(
        lambda: len(fleet_env.trial(mid_lease.trial_id).intermediate_values) >= 2,
        timeout_s=30,
        what="two epochs of the trial",
    )
    mid.kill()
    killed_at = time.monotonic()
    assert early_lease.heartbeat_at == early_lease.leased_at  # never beat

    for lease in (early_lease, mid_lease):
        wait_until(
            lambda lease=lease: fleet_env.trial(lease.trial_id).state.name == "FAIL",
            timeout_s=REAP_DEADLINE_S,
            what=f"trial {lease.number} to be reaped",
        )
    assert time.monotonic() - killed_at < REAP_DEADLINE_S
    failed = {lease.number: fleet_env.trial(lease.trial_id) for lease in (early_lease, mid_lease)}
    assert all("no heartbeat" in t.user_attrs["fail_reason"] for t in failed.values())
    waiting = [t for t in fleet_env.trials(study_id) if t.state.name == "WAITING"]
    assert sorted(t.user_attrs["retry_of"] for t in waiting) == sorted(failed)
    assert {r.state for r in fleet_env.leases(study_id)} == {"expired"}

    # A late word from a dead lease changes nothing; from another holder (no secret)
    # the lease is not even there.
    with fleet_env.client() as client:
        late = client.post(
            f"/trials/{mid_lease.trial_id}/complete", json={"values": {"accuracy": 0.5}}
        )
    assert late.status_code == 404

    rescuer = fleet_env.start_worker("--idle-exit", "1", epoch_s=0.005, name="rescuer")
    assert fleet_env.wait_workers([rescuer], timeout_s=60) == [0]
    trials = fleet_env.trials(study_id)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 2 and len(trials) == 4  # two failed, their two retries
    assert {t.user_attrs["retry_of"] for t in complete} == set(failed)
    for trial in complete:
        assert trial.params == failed[trial.user_attrs["retry_of"]].params
    assert fleet_env.study_state(study_id) == "completed"


def test_a_paused_study_makes_its_worker_abandon_the_trial(fleet_env: FleetEnv):
    study_id = fleet_env.create_study("paused-mid-trial", budget={"max_trials": 2, "epochs": 30})
    worker = fleet_env.start_worker("--idle-exit", "1", epoch_s=0.2)
    lease = wait_until(active_lease(fleet_env, study_id, worker.name), timeout_s=30, what="a lease")
    fleet_env.set_study_state(study_id, "paused")
    assert fleet_env.wait_workers([worker], timeout_s=30) == [0]
    abandoned = fleet_env.trial(lease.trial_id)
    assert abandoned.state.name == "FAIL"
    assert abandoned.user_attrs["fail_reason"] == "abandoned: the study was paused"
    assert len(abandoned.intermediate_values) < 30
    # Re-queued, so that resuming the study runs these parameters again.
    (retry,) = [t for t in fleet_env.trials(study_id) if t.state.name == "WAITING"]
    assert retry.user_attrs["retry_of"] == abandoned.number


def test_an_artifact_the_service_cannot_reach_does_not_cost_the_trials_values(
    fleet_env: FleetEnv,
):
    study_id = fleet_env.create_study("elsewhere", budget={"max_trials": 2, "epochs": 1})
    worker = fleet_env.start_worker("--max-trials", "2", objective="elsewhere")
    assert fleet_env.wait_workers([worker], timeout_s=60) == [0]
    trials = fleet_env.trials(study_id)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert all("artifact" not in t.user_attrs for t in trials)
    log = fleet_env.worker_log(worker)
    assert "completing without it" in log and "TUNEFLEET_ARTIFACT_DIR" in log
