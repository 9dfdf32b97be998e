"""Batched leases over HTTP against a real API process and PostgreSQL."""
# ruff: noqa: F811 - the fixtures come from tests.test_fleet_support

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor

from tests.test_fleet_support import (  # noqa: F401 - fixtures
    FleetEnv,
    fleet_env,
    fleet_env_module,
)

_unique = itertools.count()


def lease_batch(client, count: int, worker_id: str | None = None) -> list[dict]:
    worker_id = worker_id or f"batch-{next(_unique)}"
    response = client.post(
        "/leases/batch", json={"worker_id": worker_id, "device": "cpu", "count": count}
    )
    if response.status_code == 204:
        return []
    assert response.status_code == 201, response.text
    return response.json()["assignments"]


def call(client, assignment: dict, path: str, body: dict, secret: str | None = None):
    return client.post(
        f"/trials/{assignment['trial_id']}/{path}",
        json=body,
        headers={"X-Lease-Secret": secret or assignment["lease_secret"]},
    )


def test_a_batch_is_trials_of_one_study_each_with_its_own_lease_and_secret(fleet_env: FleetEnv):
    first = fleet_env.create_study("batch-a")
    second = fleet_env.create_study("batch-b")
    with fleet_env.client(send_secrets=False) as client:
        batch = lease_batch(client, 5)
        assert len(batch) == 5
        assert len({a["study_id"] for a in batch}) == 1
        assert batch[0]["study_id"] in (first, second)
        assert len({a["trial_id"] for a in batch}) == 5
        assert len({a["lease_secret"] for a in batch}) == 5
        # Each carries its study's owner, as a single lease does (data roots per owner).
        assert {a["owner"] for a in batch} == {"fleet-tests"}
        assert len({tuple(sorted(a["params"].items())) for a in batch}) == 5
        a, b = batch[0], batch[1]
        # Every later call is per trial, with that trial's secret only.
        assert call(client, a, "heartbeat", {}, secret=b["lease_secret"]).status_code == 404
        assert call(client, a, "heartbeat", {}).json()["stop"] is False
        assert call(client, a, "intermediate", {"step": 1, "value": 0.5}).status_code == 200
        done = call(client, a, "complete", {"values": {"accuracy": 0.9}})
        assert done.status_code == 200 and done.json()["state"] == "complete"
        failed = call(client, b, "fail", {"reason": "worker interrupted"})
        assert failed.json()["retry_trial_id"] is not None
    rows = fleet_env.leases(batch[0]["study_id"])
    assert {r.trial_id: r.state for r in rows} == {
        x["trial_id"]: {a["trial_id"]: "completed", b["trial_id"]: "released"}.get(
            x["trial_id"], "active"
        )
        for x in batch
    }


def test_waiting_trials_go_out_first_in_a_batch(fleet_env: FleetEnv):
    study_id = fleet_env.create_study("batch-waiting")
    queued = [{"lr": 0.00123, "dropout": 0.1}, {"lr": 0.0456, "dropout": 0.2}]
    for params in queued:
        fleet_env.enqueue(study_id, params)
    with fleet_env.client() as client:
        batch = lease_batch(client, 4)
    assert [a["params"] for a in batch[:2]] == queued
    assert len({a["number"] for a in batch}) == 4
    assert fleet_env.states(study_id) == {"RUNNING": 4}


def test_the_sampler_sees_the_earlier_trials_of_the_batch(fleet_env: FleetEnv):
    # Past its first len(grid) trial numbers the grid sampler draws among the points no
    # finished or RUNNING trial has: blind to the batch's own trials, it repeats points.
    space = {
        "lr": {"type": "categorical", "choices": [0.001, 0.01, 0.1]},
        "dropout": {"type": "categorical", "choices": [0.0, 0.5]},
    }
    study_id = fleet_env.create_study(
        "batch-grid",
        search_space=space,
        sampler={"type": "grid", "seed": 1},
        budget={"max_trials": 20, "epochs": 1},
    )
    for _ in range(6):  # trial numbers 0-5, outside the grid's bookkeeping
        fleet_env.enqueue(study_id, {"lr": 0.001, "dropout": 0.0})
    with fleet_env.client() as client:
        batch = lease_batch(client, 12)
    assert [a["number"] for a in batch] == list(range(12))
    points = {(a["params"]["lr"], a["params"]["dropout"]) for a in batch[6:]}
    assert len(points) == 6


def test_sixteen_workers_asking_for_sixteen_never_pass_the_budget(fleet_env: FleetEnv):
    study_id = fleet_env.create_study("batch-budget", budget={"max_trials": 20, "epochs": 1})
    with fleet_env.client() as client, ThreadPoolExecutor(16) as pool:
        batches = list(pool.map(lambda i: lease_batch(client, 16, f"budget-{i}"), range(16)))
    trial_ids = [a["trial_id"] for batch in batches for a in batch]
    assert len(trial_ids) == 20 == len(set(trial_ids))
    assert fleet_env.states(study_id) == {"RUNNING": 20}
    assert len(fleet_env.leases(study_id)) == 20
    with fleet_env.client() as client:
        assert lease_batch(client, 16) == []


def test_asking_again_with_the_same_worker_id_gives_the_same_leases(fleet_env: FleetEnv):
    fleet_env.create_study("batch-again")
    with fleet_env.client(send_secrets=False) as client:
        first = lease_batch(client, 3, "again-w")
        second = lease_batch(client, 3, "again-w")
        assert [a["trial_id"] for a in second] == [a["trial_id"] for a in first]
        # The new secrets hold; the lost answer's ones no longer do.
        assert call(client, second[0], "heartbeat", {}).status_code == 200
        assert call(client, first[0], "heartbeat", {}).status_code == 404


def test_a_count_out_of_range_is_422_naming_the_field(fleet_env: FleetEnv):
    with fleet_env.client() as client:
        for count in (0, 65):
            response = client.post(
                "/leases/batch", json={"worker_id": "w", "device": "cpu", "count": count}
            )
            assert response.status_code == 422, response.text
            assert "count" in response.text


def test_no_running_study_means_204(fleet_env: FleetEnv):
    study_id = fleet_env.create_study("batch-idle")
    fleet_env.set_study_state(study_id, "paused")
    with fleet_env.client() as client:
        assert lease_batch(client, 8) == []
