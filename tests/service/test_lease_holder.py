"""Worker calls bound to the lease holder, and what a worker may hand in: attacks
through the real API (and a real worker process), each refused."""
# ruff: noqa: F811 - the fixtures come from tests.test_fleet_support

from __future__ import annotations

import itertools
import json
from pathlib import Path

import httpx
import pytest

from service.errors import InvalidSpec
from tests.test_fleet_support import (  # noqa: F401 - fixtures
    FleetEnv,
    fleet_env,
    fleet_env_module,
    wait_until,
)

_unique = itertools.count()


def lease(client: httpx.Client, worker_id: str | None = None) -> dict | None:
    worker_id = worker_id or f"holder-{next(_unique)}"
    response = client.post("/leases", json={"worker_id": worker_id, "device": "cpu"})
    if response.status_code == 204:
        return None
    assert response.status_code == 201, response.text
    return response.json()


def error(response: httpx.Response) -> dict:
    return response.json()["detail"]


def test_another_token_with_the_same_worker_id_does_not_get_that_workers_lease(
    fleet_env: FleetEnv,
):
    fleet_env.create_study("same-id", budget={"max_trials": 1, "epochs": 1})
    with fleet_env.client() as owner, fleet_env.client(fleet_env.token()) as thief:
        mine = lease(owner, "gpu-7")
        assert lease(thief, "gpu-7") is None  # the study's one trial is taken: nothing for it
        again = lease(owner, "gpu-7")
    assert again["trial_id"] == mine["trial_id"]
    assert again["lease_secret"] and again["lease_secret"] != mine["lease_secret"]


def test_calls_without_the_lease_secret_or_from_another_token_are_404(fleet_env: FleetEnv):
    fleet_env.create_study("secret")
    other_token = fleet_env.token()
    with fleet_env.client() as holder:
        assignment = lease(holder)
    trial_id, secret = assignment["trial_id"], assignment["lease_secret"]
    calls = [
        ("heartbeat", {}),
        ("intermediate", {"step": 1, "value": 0.5}),
        ("complete", {"values": {"accuracy": 0.999999}}),
        ("fail", {"reason": "forged"}),
    ]
    attempts = [
        fleet_env.client(send_secrets=False),  # the holder's token, no secret
        fleet_env.client(other_token, send_secrets=False),  # another token, no secret
    ]
    for client in attempts:
        with client:
            for call, body in calls:
                answer = client.post(f"/trials/{trial_id}/{call}", json=body)
                assert answer.status_code == 404, (call, answer.text)
                assert "X-Lease-Secret" in error(answer)["message"]
                wrong = client.post(
                    f"/trials/{trial_id}/{call}", json=body, headers={"X-Lease-Secret": "guess"}
                )
                assert wrong.status_code == 404
    # The secret alone is not enough either: it goes with the token that took the lease.
    with fleet_env.client(other_token, send_secrets=False) as client:
        stolen = client.post(
            f"/trials/{trial_id}/fail",
            json={"reason": "forged"},
            headers={"X-Lease-Secret": secret},
        )
    assert stolen.status_code == 404
    assert fleet_env.trial(trial_id).state.name == "RUNNING"
    with fleet_env.client(send_secrets=False) as holder:
        done = holder.post(
            f"/trials/{trial_id}/complete",
            json={"values": {"accuracy": 0.5}},
            headers={"X-Lease-Secret": secret},
        )
    assert done.status_code == 200 and done.json()["state"] == "complete"


def test_a_second_worker_token_cannot_touch_a_real_workers_trial(fleet_env: FleetEnv):
    study_id = fleet_env.create_study("victim", budget={"max_trials": 1, "epochs": 3})
    worker = fleet_env.start_worker("--idle-exit", "1", epoch_s=0.7, name="victim-worker")
    (row,) = wait_until(
        lambda: [r for r in fleet_env.leases(study_id) if r.state == "active"],
        timeout_s=30,
        what="the worker's lease",
    )
    with fleet_env.client(fleet_env.token(owner="intruder")) as thief:
        # Leasing under the worker's id gives nothing (the study's only trial is its).
        assert lease(thief, "victim-worker") is None
        for call, body in [
            ("heartbeat", {}),
            ("complete", {"values": {"accuracy": 0.999999}, "artifact": "/etc/shadow"}),
            ("fail", {"reason": "forged reason"}),
        ]:
            assert thief.post(f"/trials/{row.trial_id}/{call}", json=body).status_code == 404
    assert fleet_env.wait_workers([worker], timeout_s=60) == [0]
    trial = fleet_env.trial(row.trial_id)
    assert trial.state.name == "COMPLETE" and trial.value != 0.999999
    assert "fail_reason" not in trial.user_attrs and "artifact" not in trial.user_attrs
    assert "409" not in fleet_env.worker_log(worker)


def test_values_out_of_their_metric_range_are_422(fleet_env: FleetEnv):
    objectives = [
        {"metric": "accuracy", "direction": "maximize"},
        {"metric": "latency_ms", "direction": "minimize"},
    ]
    fleet_env.create_study("ranges", objectives=objectives)
    with fleet_env.client() as client:
        trial_id = lease(client)["trial_id"]
        url = f"/trials/{trial_id}/complete"
        for values, metric in [
            ({"accuracy": 1e308, "latency_ms": 3.0}, "accuracy"),
            ({"accuracy": -0.01, "latency_ms": 3.0}, "accuracy"),
            ({"accuracy": 0.9, "latency_ms": -1.0}, "latency_ms"),
        ]:
            answer = client.post(url, json={"values": values})
            assert answer.status_code == 422, answer.text
            assert error(answer)["path"] == ["values", metric]
        assert fleet_env.trial(trial_id).state.name == "RUNNING"
        ok = client.post(url, json={"values": {"accuracy": 1.0, "latency_ms": 0.0}})
    assert ok.status_code == 200 and ok.json()["state"] == "complete"


def test_a_non_finite_intermediate_value_fails_the_trial_with_the_reason(fleet_env: FleetEnv):
    fleet_env.create_study("nan-step")
    with fleet_env.client() as client:
        trial_id = lease(client)["trial_id"]
        answer = client.post(
            f"/trials/{trial_id}/intermediate",
            content=b'{"step": 2, "value": NaN}',
            headers={"Content-Type": "application/json"},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["prune"] is True and "non-finite" in answer.json()["reason"]
        late = client.post(f"/trials/{trial_id}/complete", json={"values": {"accuracy": 0.5}})
    assert late.status_code == 409
    trial = fleet_env.trial(trial_id)
    assert trial.state.name == "FAIL"
    assert "non-finite value nan at step 2" in trial.user_attrs["fail_reason"]


def test_an_artifact_outside_the_artifact_root_is_422(fleet_env: FleetEnv):
    fleet_env.create_study("artifact", budget={"max_trials": 10, "epochs": 1})
    root = Path(fleet_env.api.settings["data_dir"]) / "artifacts"
    with fleet_env.client() as client:
        trial_id = lease(client)["trial_id"]
        url = f"/trials/{trial_id}/complete"
        for artifact in ["/etc/shadow", "../../etc/passwd", f"{root}/../x", "s3://b/k"]:
            answer = client.post(url, json={"values": {"accuracy": 0.5}, "artifact": artifact})
            assert answer.status_code == 422, (artifact, answer.text)
            assert error(answer)["path"] == ["artifact"]
        inside = client.post(
            url, json={"values": {"accuracy": 0.5}, "artifact": f"{root}/study/7.safetensors"}
        )
        assert inside.status_code == 200, inside.text
        relative_id = lease(client)["trial_id"]
        relative = client.post(
            f"/trials/{relative_id}/complete",
            json={"values": {"accuracy": 0.5}, "artifact": "study/8.safetensors"},
        )
    assert relative.status_code == 200
    stored = fleet_env.trial(relative_id).user_attrs["artifact"]
    assert stored == str(root.resolve() / "study" / "8.safetensors")


def nested(depth: int) -> dict:
    value: dict = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"n": value}
    return value


def test_attrs_too_deep_are_422_and_too_large_are_413(fleet_env: FleetEnv):
    fleet_env.create_study("attrs")
    with fleet_env.client() as client:
        trial_id = lease(client)["trial_id"]
        url = f"/trials/{trial_id}/complete"
        deep = client.post(url, json={"values": {"accuracy": 0.5}, "attrs": {"a": nested(500)}})
        assert deep.status_code == 422 and error(deep)["path"] == ["attrs", "a"]
        big = client.post(url, json={"values": {"accuracy": 0.5}, "attrs": {"b": "x" * 70_000}})
        assert big.status_code == 413 and "TUNEFLEET_MAX_ATTRS_BYTES" in error(big)["message"]
        ok = client.post(url, json={"values": {"accuracy": 0.5}, "attrs": {"a": nested(7)}})
    assert ok.status_code == 200, ok.text


def test_a_trial_with_attrs_nested_500_deep_still_shows(fleet_env: FleetEnv):
    # Attributes stored before the limit existed must not make the trial a permanent 500.
    study_id = fleet_env.create_study("deep-show", owner="deep-owner")
    user = fleet_env.token(scope="user", owner="deep-owner")
    with fleet_env.client() as client:
        trial_id = lease(client)["trial_id"]
    fleet_env.storage.set_trial_user_attr(trial_id, "deep", nested(500))
    with httpx.Client(base_url=fleet_env.api.url, headers={"Authorization": f"Bearer {user}"}) as c:
        detail = c.get(f"/api/v1/studies/{study_id}/trials/0")
    assert detail.status_code == 200, detail.text
    shown = json.dumps(detail.json()["user_attrs"]["deep"])
    assert "not shown" in shown


def test_a_worker_token_bound_to_an_owner_leases_only_their_studies(fleet_env: FleetEnv):
    fleet_env.create_study("others", owner="someone-else")
    mine = fleet_env.create_study("team-study", owner="team-a")
    with fleet_env.client(fleet_env.token(owner="team-a-pool", studies_of="team-a")) as client:
        first = lease(client)
        assert first["study_id"] == mine
        fleet_env.set_study_state(mine, "paused")
        assert lease(client) is None  # someone-else's study is running, but not for this fleet


def test_a_bound_token_must_be_a_worker_token(fleet_env: FleetEnv):
    with pytest.raises(InvalidSpec, match="scope worker"):
        fleet_env.token(scope="user", owner="x", studies_of="team-a")
