"""Tokens that can be rotated: created with an expiry, listed, revoked, through real HTTP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from service.models import ApiToken
from tests.service.api.conftest import LiveApi, error_of

TOKENS = "/api/v1/tokens"


def _make(api: LiveApi, **body) -> dict:
    answer = api.as_("root").post(TOKENS, json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_admin_creates_a_token_that_works_and_is_listed_without_its_value(live_api: LiveApi):
    made = _make(live_api, scope="user", owner="dora", expires_in="30d")
    assert made["token"].startswith("tf_")
    expires = datetime.fromisoformat(made["expires_at"])
    assert timedelta(days=29) < expires - datetime.now(UTC) <= timedelta(days=30)

    as_dora = live_api.client(_bearer(made["token"]))
    studies = as_dora.get("/api/v1/studies")
    assert studies.status_code == 200, studies.text

    listed = as_dora.get(TOKENS).json()
    assert [t["id"] for t in listed["data"]] == [made["id"]]  # a user sees their own only
    assert listed["data"][0]["last_used_at"] is not None
    assert made["token"] not in str(listed)
    everyone = live_api.as_("root").get(TOKENS).json()
    assert {t["owner"] for t in everyone["data"]} >= {"alice", "bob", "dora", "gpu-node-1"}
    assert all("token" not in t and "token_hash" not in t for t in everyone["data"])


@pytest.mark.parametrize("who", ["alice", "gpu-node-1"])
def test_only_an_admin_creates_tokens(live_api: LiveApi, who: str):
    answer = live_api.as_(who).post(TOKENS, json={"scope": "admin", "owner": who})
    assert answer.status_code == 403, answer.text


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"scope": "user", "owner": "dora", "expires_in": "30 days"}, ["expires_in"]),
        ({"scope": "user", "owner": "dora", "expires_in": "0s"}, ["expires_in"]),
        ({"scope": "user", "owner": "dora", "expires_in": "99999d"}, ["expires_in"]),
        ({"scope": "root", "owner": "dora"}, ["scope"]),
        ({"scope": "user", "owner": "has space"}, ["owner"]),
    ],
)
def test_a_bad_token_request_is_422_with_its_path(live_api: LiveApi, body: dict, path: list):
    answer = live_api.as_("root").post(TOKENS, json=body)
    assert answer.status_code == 422, answer.text
    assert error_of(answer)["path"] == path


def test_a_revoked_token_is_401_saying_so(live_api: LiveApi):
    made = _make(live_api, scope="user", owner="erin")
    client = live_api.client(_bearer(made["token"]))
    revoked = client.post(f"{TOKENS}/{made['id']}/revoke")  # a user revokes their own
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked_at"] is not None
    answer = client.get("/api/v1/studies")
    assert answer.status_code == 401
    assert "revoked" in error_of(answer)["message"]
    # Revoking again is harmless for an admin; the token stays revoked.
    again = live_api.as_("root").post(f"{TOKENS}/{made['id']}/revoke")
    assert again.status_code == 200
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]


def test_another_owners_token_cannot_be_revoked_or_seen(live_api: LiveApi):
    made = _make(live_api, scope="user", owner="frank")
    answer = live_api.as_("alice").post(f"{TOKENS}/{made['id']}/revoke")
    assert answer.status_code == 404
    worker = live_api.as_("gpu-node-1").post(f"{TOKENS}/{made['id']}/revoke")
    assert worker.status_code == 403
    still = live_api.client(_bearer(made["token"])).get("/api/v1/studies")
    assert still.status_code == 200


def test_an_expired_token_is_401_saying_so(live_api: LiveApi):
    made = _make(live_api, scope="user", owner="gina", expires_in="1h")
    engine = sa.create_engine(live_api.database_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(
            sa.update(ApiToken)
            .where(ApiToken.id == made["id"])
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    engine.dispose()
    answer = live_api.client(_bearer(made["token"])).get("/api/v1/studies")
    assert answer.status_code == 401
    assert "expired" in error_of(answer)["message"]
