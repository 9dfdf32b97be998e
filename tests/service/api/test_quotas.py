"""Per-owner limits and the priority cap, through a real API with small limits."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ApiServer, create_token
from tests.service.api.conftest import study_spec, unique_name

LIMITS = {
    "max_user_priority": 10,
    "max_running_studies_per_owner": 2,
    "max_waiting_trials_per_owner": 3,
}


@pytest.fixture
def server(migrated_pg_url: str, api_server_factory) -> ApiServer:
    return api_server_factory(migrated_pg_url, **LIMITS)


@pytest.fixture
def as_(server: ApiServer) -> Iterator:
    clients: list[httpx.Client] = []

    def client(owner: str, scope: str = "user") -> httpx.Client:
        token = create_token(server.database_url, scope=scope, owner=owner)
        clients.append(
            httpx.Client(
                base_url=f"{server.url}/api/v1", headers={"Authorization": f"Bearer {token}"}
            )
        )
        return clients[-1]

    yield client
    for c in clients:
        c.close()


def new_study(client: httpx.Client, **overrides) -> httpx.Response:
    return client.post("/studies", json=study_spec(name=unique_name(), **overrides))


def test_priority_above_the_cap_needs_an_admin_token(as_):
    alice, root = as_("alice"), as_("root", "admin")
    refused = new_study(alice, priority=100)
    assert refused.status_code == 403
    assert refused.json()["detail"]["path"] == ["priority"]
    assert "TUNEFLEET_MAX_USER_PRIORITY" in refused.json()["detail"]["message"]
    assert new_study(alice, priority=10).status_code == 201
    assert new_study(root, priority=100).status_code == 201


def test_running_studies_per_owner_are_limited_with_429(as_):
    alice, bob = as_("alice"), as_("bob")
    first = new_study(alice).json()
    assert new_study(alice).status_code == 201
    third = new_study(alice)
    assert third.status_code == 429
    assert "TUNEFLEET_MAX_RUNNING_STUDIES_PER_OWNER=2" in third.json()["detail"]["message"]
    assert new_study(bob).status_code == 201  # another owner's limit is their own
    assert alice.post(f"/studies/{first['id']}/pause").status_code == 200
    assert new_study(alice).status_code == 201
    resumed = alice.post(f"/studies/{first['id']}/resume")
    assert resumed.status_code == 429


def test_enqueue_stops_at_the_budget_and_at_the_owners_waiting_limit(as_):
    alice = as_("alice")
    small = new_study(alice, budget={"max_trials": 3, "epochs": 2}).json()
    url = f"/studies/{small['id']}/trials"
    for lr in (0.01, 0.02, 0.03):
        assert alice.post(url, json={"params": {"lr": lr}}).status_code == 201
    beyond = alice.post(url, json={"params": {"lr": 0.04}})
    assert beyond.status_code == 409
    assert "max_trials 3" in beyond.json()["detail"]["message"]

    big = new_study(alice, budget={"max_trials": 50, "epochs": 2}).json()
    waiting = alice.post(f"/studies/{big['id']}/trials", json={"params": {"lr": 0.05}})
    assert waiting.status_code == 429  # three waiting already, in the other study
    assert "TUNEFLEET_MAX_WAITING_TRIALS_PER_OWNER=3" in waiting.json()["detail"]["message"]


def test_a_private_owners_studies_go_only_to_their_own_fleet(migrated_pg_url, api_server_factory):
    server = api_server_factory(migrated_pg_url, private_owners='["team-a"]')

    def client(owner: str, scope: str, **options: str) -> httpx.Client:
        token = create_token(server.database_url, scope=scope, owner=owner, **options)
        return httpx.Client(
            base_url=f"{server.url}/api/v1", headers={"Authorization": f"Bearer {token}"}
        )

    body = {"worker_id": "w-1", "device": "cpu"}
    with (
        client("team-a", "user") as team_a,
        client("shared-pool", "worker") as shared,
        client("team-a-pool", "worker", studies_of="team-a") as private,
    ):
        study = new_study(team_a).json()
        assert shared.post("/leases", json=body).status_code == 204
        leased = private.post("/leases", json=body)
        assert leased.status_code == 201 and leased.json()["study_id"] == study["id"]
