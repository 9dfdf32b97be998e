"""The worker protocol over HTTP against a real API process and PostgreSQL."""
# ruff: noqa: F811 - the fixtures come from tests.test_fleet_support

from __future__ import annotations

import itertools
import math
from concurrent.futures import ThreadPoolExecutor

from tests.test_fleet_support import (  # noqa: F401 - fixtures
    REAP_DEADLINE_S,
    FleetEnv,
    fleet_env,
    fleet_env_module,
    wait_until,
)

_unique = itertools.count()


def lease(client, worker_id: str | None = None) -> dict | None:
    # Worker ids are unique per test: a worker asking again gets its own lease back.
    worker_id = f"{worker_id or 'w'}-{next(_unique)}"
    response = client.post("/leases", json={"worker_id": worker_id, "device": "cpu"})
    if response.status_code == 204:
        return None
    assert response.status_code == 201, response.text
    return response.json()


def test_lease_gives_a_trial_with_params_spec_and_deadline(fleet_env: FleetEnv):
    study_id = fleet_env.create_study("shape")
    with fleet_env.client() as client:
        assignment = lease(client)
    assert assignment["study_id"] == study_id
    assert assignment["number"] == 0
    assert set(assignment["params"]) == {"lr", "dropout"}
    assert assignment["spec"]["name"] == "shape"
    assert assignment["lease_expires_at"]
    assert fleet_env.trial(assignment["trial_id"]).state.name == "RUNNING"
    (row,) = fleet_env.leases(study_id)
    assert (row.trial_id, row.state, row.device) == (assignment["trial_id"], "active", "cpu")


def test_no_running_study_means_204(fleet_env: FleetEnv):
    study_id = fleet_env.create_study("idle")
    fleet_env.set_study_state(study_id, "paused")
    with fleet_env.client() as client:
        assert lease(client) is None


def test_calls_without_a_worker_token_are_refused(fleet_env: FleetEnv):
    fleet_env.create_study("auth")
    with fleet_env.client(token="tf_not-a-token") as client:
        response = client.post("/leases", json={"worker_id": "w", "device": "cpu"})
    assert response.status_code == 401


def test_a_worker_asking_again_gets_its_own_lease_back(fleet_env: FleetEnv):
    fleet_env.create_study("again")
    body = {"worker_id": "w-again", "device": "cuda:1"}
    with fleet_env.client() as client:
        first = client.post("/leases", json=body).json()
        second = client.post("/leases", json=body).json()
        other = lease(client, "w-other")
    assert second["trial_id"] == first["trial_id"]
    assert second["params"] == first["params"]
    assert other["trial_id"] != first["trial_id"]


def test_an_enqueued_trial_goes_to_exactly_one_of_many_workers(fleet_env: FleetEnv):
    study_id = fleet_env.create_study("enqueued", budget={"max_trials": 20, "epochs": 2})
    fleet_env.enqueue(study_id, {"lr": 0.001234, "dropout": 0.4321})
    with fleet_env.client() as client, ThreadPoolExecutor(8) as pool:
        assignments = list(pool.map(lambda i: lease(client, f"w-{i}"), range(8)))
    assert all(assignments)
    with_params = [a for a in assignments if a["params"] == {"lr": 0.001234, "dropout": 0.4321}]
    assert len(with_params) == 1
    assert len({a["trial_id"] for a in assignments}) == 8
    assert len({a["number"] for a in assignments}) == 8


def test_the_budget_counts_running_trials_and_the_study_completes(fleet_env: FleetEnv):
    study_id = fleet_env.create_study("budget", budget={"max_trials": 2, "epochs": 1})
    with fleet_env.client() as client:
        a, b = lease(client, "w-a"), lease(client, "w-b")
        assert lease(client, "w-c") is None
        for assignment in (a, b):
            response = client.post(
                f"/trials/{assignment['trial_id']}/complete", json={"values": {"accuracy": 0.5}}
            )
            assert response.status_code == 200, response.text
    assert fleet_env.states(study_id) == {"COMPLETE": 2}
    assert fleet_env.study_state(study_id) == "completed"


def test_heartbeat_extends_the_lease_records_progress_and_says_stop_when_paused(
    fleet_env: FleetEnv,
):
    study_id = fleet_env.create_study("paused")
    with fleet_env.client() as client:
        assignment = lease(client)
        url = f"/trials/{assignment['trial_id']}/heartbeat"
        ack = client.post(url, json={"progress": {"epoch": 2, "total_epochs": 3}}).json()
        assert ack["stop"] is False
        assert ack["lease_expires_at"] > assignment["lease_expires_at"]
        assert fleet_env.trial(assignment["trial_id"]).user_attrs["progress"] == {
            "epoch": 2,
            "total_epochs": 3,
        }
        fleet_env.set_study_state(study_id, "paused")
        ack = client.post(url, json={}).json()
        assert ack == {**ack, "stop": True, "reason": "the study was paused"}
        assert lease(client, "w-new") is None


def test_intermediate_values_are_idempotent_and_cannot_change(fleet_env: FleetEnv):
    fleet_env.create_study("intermediate")
    with fleet_env.client() as client:
        trial_id = lease(client)["trial_id"]
        url = f"/trials/{trial_id}/intermediate"
        assert client.post(url, json={"step": 1, "value": 0.5}).json() == {"prune": False}
        assert client.post(url, json={"step": 1, "value": 0.5}).json() == {"prune": False}
        conflict = client.post(url, json={"step": 1, "value": 0.6})
        assert conflict.status_code == 409
        assert "cannot be changed" in conflict.json()["detail"]["message"]
    assert fleet_env.trial(trial_id).intermediate_values == {1: 0.5}


def test_complete_twice_is_the_same_answer_and_other_values_are_409(fleet_env: FleetEnv):
    fleet_env.create_study("complete")
    with fleet_env.client() as client:
        trial_id = lease(client)["trial_id"]
        body = {"values": {"accuracy": 0.75}, "attrs": {"robust_gaussian": 0.6}}
        first = client.post(f"/trials/{trial_id}/complete", json=body)
        again = client.post(f"/trials/{trial_id}/complete", json=body)
        other = client.post(f"/trials/{trial_id}/complete", json={"values": {"accuracy": 0.7}})
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert first.json()["state"] == "complete"
    assert first.json()["values"] == {"accuracy": 0.75}
    assert other.status_code == 409
    trial = fleet_env.trial(trial_id)
    assert trial.values == [0.75]
    assert trial.user_attrs["robust_gaussian"] == 0.6


def test_complete_needs_one_value_per_objective(fleet_env: FleetEnv):
    fleet_env.create_study(
        "two-objectives",
        objectives=[
            {"metric": "accuracy", "direction": "maximize"},
            {"metric": "robustness", "direction": "maximize"},
        ],
    )
    with fleet_env.client() as client:
        trial_id = lease(client)["trial_id"]
        missing = client.post(f"/trials/{trial_id}/complete", json={"values": {"accuracy": 1}})
        assert missing.status_code == 422
        assert "robustness" in missing.json()["detail"]["message"]
        both = {"values": {"accuracy": 0.9, "robustness": 0.4}}
        assert client.post(f"/trials/{trial_id}/complete", json=both).status_code == 200
    assert fleet_env.trial(trial_id).values == [0.9, 0.4]


def test_complete_with_nan_fails_the_trial_with_a_reason(fleet_env: FleetEnv):
    fleet_env.create_study("nan")
    with fleet_env.client() as client:
        trial_id = lease(client)["trial_id"]
        body = '{"values": {"accuracy": NaN}}'
        headers = {"Content-Type": "application/json"}
        first = client.post(f"/trials/{trial_id}/complete", content=body, headers=headers)
        again = client.post(f"/trials/{trial_id}/complete", content=body, headers=headers)
    assert first.status_code == again.status_code == 200, first.text
    assert first.json()["state"] == "fail"
    assert "non-finite" in first.json()["reason"]
    assert again.json() == first.json()
    trial = fleet_env.trial(trial_id)
    assert trial.state.name == "FAIL"
    assert "non-finite" in trial.user_attrs["fail_reason"]


def test_fail_requeues_a_trial_the_worker_let_go_of_but_not_a_broken_one(fleet_env: FleetEnv):
    study_id = fleet_env.create_study("fail")
    with fleet_env.client() as client:
        broken = lease(client, "w-1")["trial_id"]
        outcome = client.post(f"/trials/{broken}/fail", json={"reason": "ValueError: boom"})
        assert outcome.json()["retry_trial_id"] is None
        released = lease(client, "w-2")
        outcome = client.post(
            f"/trials/{released['trial_id']}/fail", json={"reason": "worker interrupted"}
        ).json()
    assert outcome["state"] == "fail"
    retry = fleet_env.trial(outcome["retry_trial_id"])
    assert retry.state.name == "WAITING"
    assert retry.user_attrs["retry_of"] == released["number"]
    assert retry.user_attrs["retry_count"] == 1
    assert fleet_env.trial(broken).user_attrs["fail_reason"] == "ValueError: boom"
    assert fleet_env.states(study_id) == {"FAIL": 2, "WAITING": 1}


def test_unknown_trial_is_404(fleet_env: FleetEnv):
    with fleet_env.client() as client:
        response = client.post("/trials/987654/heartbeat", json={})
    assert response.status_code == 404


def test_a_silent_lease_is_reaped_requeued_once_and_its_late_complete_is_409(
    fleet_env: FleetEnv,
):
    study_id = fleet_env.create_study(
        "reaped", budget={"max_trials": 3, "epochs": 1, "max_retries": 1}
    )
    with fleet_env.client() as client:
        dead = lease(client, "w-dead")
        # No heartbeat ever: the lease was alive from the moment it was handed out.
        wait_until(
            lambda: fleet_env.trial(dead["trial_id"]).state.name == "FAIL",
            timeout_s=REAP_DEADLINE_S,
            what="the silent lease to be reaped",
        )
        failed = fleet_env.trial(dead["trial_id"])
        assert "no heartbeat" in failed.user_attrs["fail_reason"]
        waiting = [t for t in fleet_env.trials(study_id) if t.state.name == "WAITING"]
        assert len(waiting) == 1
        assert waiting[0].params == {} and waiting[0].user_attrs["retry_of"] == dead["number"]
        assert failed.user_attrs["retried_as"] == waiting[0].number

        late = client.post(
            f"/trials/{dead['trial_id']}/complete", json={"values": {"accuracy": 0.9}}
        )
        assert late.status_code == 409
        assert "expired" in late.json()["detail"]["message"]
        assert client.post(f"/trials/{dead['trial_id']}/heartbeat", json={}).json()["stop"]
        assert fleet_env.trial(dead["trial_id"]).state.name == "FAIL"

        retry = lease(client, "w-live")
        assert retry["number"] == waiting[0].number
        assert retry["params"] == dead["params"]
        done = client.post(
            f"/trials/{retry['trial_id']}/complete", json={"values": {"accuracy": 0.8}}
        )
        assert done.status_code == 200

        # max_retries=1: a retry that goes silent too is not re-queued again.
        silent_retry = lease(client, "w-dead-2")
        wait_until(
            lambda: fleet_env.trial(silent_retry["trial_id"]).state.name == "FAIL",
            timeout_s=REAP_DEADLINE_S,
            what="the second silent lease to be reaped",
        )
        second_retry = lease(client, "w-dead-3")
        client.post(
            f"/trials/{second_retry['trial_id']}/fail", json={"reason": "worker interrupted"}
        )
        third = fleet_env.trial(second_retry["trial_id"])
    assert third.user_attrs["retry_count"] == 1
    assert "retried_as" not in third.user_attrs
    assert [t.state.name for t in fleet_env.trials(study_id)].count("WAITING") == 0


def test_a_trial_past_its_timeout_is_failed_and_its_worker_told_to_stop(fleet_env: FleetEnv):
    study_id = fleet_env.create_study(
        "timeout", budget={"max_trials": 3, "epochs": 1, "trial_timeout_s": 1}
    )
    with fleet_env.client() as client:
        trial_id = lease(client)["trial_id"]

        def stopped() -> bool:  # heartbeating all along, so only the timeout can end it
            return client.post(f"/trials/{trial_id}/heartbeat", json={}).json()["stop"]

        wait_until(stopped, timeout_s=REAP_DEADLINE_S, what="the timeout", every_s=0.3)
    trial = fleet_env.trial(trial_id)
    assert trial.state.name == "FAIL"
    assert "timed out" in trial.user_attrs["fail_reason"]
    assert "retried_as" not in trial.user_attrs
    assert fleet_env.states(study_id) == {"FAIL": 1}


def test_median_pruner_prunes_a_poor_trial_and_the_decision_sticks(fleet_env: FleetEnv):
    study_id = fleet_env.create_study(
        "pruned",
        pruner={"type": "median", "n_startup_trials": 2},
        budget={"max_trials": 10, "epochs": 3},
    )
    with fleet_env.client() as client:
        for worker in ("w-1", "w-2"):
            trial_id = lease(client, worker)["trial_id"]
            for step in (1, 2, 3):
                client.post(f"/trials/{trial_id}/intermediate", json={"step": step, "value": 0.9})
            client.post(f"/trials/{trial_id}/complete", json={"values": {"accuracy": 0.9}})
        poor = lease(client, "w-3")["trial_id"]
        url = f"/trials/{poor}/intermediate"
        assert client.post(url, json={"step": 1, "value": 0.1}).json() == {"prune": True}
        assert client.post(url, json={"step": 1, "value": 0.1}).json() == {"prune": True}
        late = client.post(f"/trials/{poor}/complete", json={"values": {"accuracy": 0.1}})
        assert late.status_code == 409
        good = lease(client, "w-4")["trial_id"]
        assert client.post(
            f"/trials/{good}/intermediate", json={"step": 1, "value": 0.95}
        ).json() == {"prune": False}
    pruned = fleet_env.trial(poor)
    assert pruned.state.name == "PRUNED"
    assert math.isclose(pruned.value, 0.1)
    assert fleet_env.states(study_id) == {"COMPLETE": 2, "PRUNED": 1, "RUNNING": 1}


def test_a_finished_study_leaves_the_loaded_study_cache(fleet_env: FleetEnv):
    """A completed study hands out nothing more: the process that settles it frees its
    Study objects at once instead of keeping them until the cache's LRU rule reaches them."""
    import optuna

    from service.budget import settle_study
    from service.db import session_scope
    from service.models import StudyRecord
    from service.study_cache import _loaded_studies, study_of

    study_id = fleet_env.create_study("cache-free", budget={"max_trials": 1, "epochs": 1})
    with session_scope(fleet_env.engine) as session:
        study_of(fleet_env.storage, session.get_one(StudyRecord, study_id))  # as a lease does
    assert any(key[1] == study_id for key in _loaded_studies)
    # Its one trial done (here directly in Optuna, so that this process settles it).
    study = optuna.load_study(study_name="fleet-tests.cache-free", storage=fleet_env.storage)
    study.add_trial(optuna.trial.create_trial(value=0.5))
    with session_scope(fleet_env.engine) as session:
        settle_study(session, storage=fleet_env.storage, study_id=study_id)
    with session_scope(fleet_env.engine) as session:
        assert session.get_one(StudyRecord, study_id).state == "completed"
    assert not any(key[1] == study_id for key in _loaded_studies)


RESNET, MOBILENET = "torchvision:resnet18", "torchvision:mobilenet_v3_small"


def _backbone_study(fleet_env: FleetEnv, name: str) -> int:
    """A study searching two backbones, with four trials enqueued in the order
    resnet, mobilenet, resnet, mobilenet."""
    study_id = fleet_env.create_study(
        name,
        source_model=RESNET,
        search_space={
            "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            "source_model": {"type": "categorical", "choices": [RESNET, MOBILENET]},
        },
        source_weights="pretrained",
        sampler={"type": "random", "seed": 1},
    )
    for i, backbone in enumerate([RESNET, MOBILENET, RESNET, MOBILENET]):
        fleet_env.enqueue(study_id, {"lr": 0.001 * (i + 1), "source_model": backbone})
    return study_id


def test_a_worker_gets_the_waiting_trials_of_the_backbone_it_holds_first(fleet_env: FleetEnv):
    _backbone_study(fleet_env, "waiting-warm")
    with fleet_env.client() as client:
        warm = client.post(
            "/leases", json={"worker_id": "w-warm", "warm_backbones": [MOBILENET]}
        ).json()
        cold = client.post("/leases", json={"worker_id": "w-cold"}).json()
        other = client.post(
            "/leases", json={"worker_id": "w-other", "warm_backbones": ["timm:resnet50"]}
        ).json()
    # The older resnet trial waits for a worker without mobilenet loaded.
    assert (warm["number"], warm["params"]["source_model"]) == (1, MOBILENET)
    assert (cold["number"], cold["params"]["source_model"]) == (0, RESNET)
    assert (other["number"], other["params"]["source_model"]) == (2, RESNET)


def test_a_batch_lease_takes_the_waiting_trials_of_a_warm_backbone_first(fleet_env: FleetEnv):
    study_id = _backbone_study(fleet_env, "waiting-warm-batch")
    with fleet_env.client() as client:
        response = client.post(
            "/leases/batch",
            json={"worker_id": "w-batch", "count": 3, "warm_backbones": [MOBILENET]},
        )
    assert response.status_code == 201, response.text
    got = [(a["number"], a["params"]["source_model"]) for a in response.json()["assignments"]]
    assert got == [(1, MOBILENET), (3, MOBILENET), (0, RESNET)]
    assert fleet_env.states(study_id) == {"RUNNING": 3, "WAITING": 1}
