"""Who may do what: tokens, scopes and owners, through the API's HTTP interface."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from service.auth import create_token, hash_token
from service.config import load_settings
from service.db import make_engine, session_scope
from service.errors import Conflict
from tests.service.api.conftest import LiveApi, create_study, error_of

STUDIES = "/api/v1/studies"


def user_routes(study_id: int) -> list[tuple[str, str, dict | None]]:
    """Every user route of a study: (method, path, json body)."""
    base = f"{STUDIES}/{study_id}"
    return [
        ("GET", base, None),
        ("POST", f"{base}/pause", None),
        ("POST", f"{base}/resume", None),
        ("POST", f"{base}/stop", None),
        ("DELETE", base, None),
        ("GET", f"{base}/trials", None),
        ("GET", f"{base}/trials/0", None),
        ("POST", f"{base}/trials", {"params": {"lr": 0.01}}),
    ]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer tf_not-a-real-token"},
        {"Authorization": "Basic YWxpY2U6c2VjcmV0"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer " + "x" * 5000},
    ],
)
def test_missing_or_bad_token_is_401_with_www_authenticate(
    live_api: LiveApi, headers: dict
) -> None:
    anonymous = live_api.client()
    for method, path in [("GET", STUDIES), ("POST", STUDIES), ("GET", f"{STUDIES}/1/trials")]:
        answer = anonymous.request(method, path, headers=headers, json={})
        assert answer.status_code == 401, (method, path, answer.text)
        assert answer.headers["WWW-Authenticate"] == "Bearer"
        assert error_of(answer)["code"] == "unauthorized"


def test_health_and_metrics_need_no_token(live_api: LiveApi) -> None:
    anonymous = live_api.client()
    assert anonymous.get("/healthz").status_code == 200
    assert anonymous.get("/metrics").status_code == 200


def test_worker_token_cannot_use_the_study_api(live_api: LiveApi) -> None:
    study = create_study(live_api.as_("alice"))
    worker = live_api.as_("gpu-node-1")
    create = worker.post(STUDIES, json=study["spec"] | {"name": "from-a-worker"})
    assert create.status_code == 403
    assert "worker" in error_of(create)["message"]
    for method, path, body in [("GET", STUDIES, None), *user_routes(study["id"])]:
        answer = worker.request(method, path, json=body)
        assert answer.status_code == 403, (method, path)
    assert live_api.as_("alice").get(f"{STUDIES}/{study['id']}").json()["state"] == "running"


def test_another_owners_study_is_404_everywhere(live_api: LiveApi) -> None:
    study = create_study(live_api.as_("alice"))
    bob = live_api.as_("bob")
    for method, path, body in user_routes(study["id"]):
        answer = bob.request(method, path, json=body)
        assert answer.status_code == 404, (method, path, answer.text)
    assert bob.get(f"{STUDIES}/by-name/{study['name']}").status_code == 404
    assert study["id"] not in [
        s["id"] for s in bob.get(STUDIES, params={"limit": 500}).json()["data"]
    ]
    # Nothing happened to it.
    shown = live_api.as_("alice").get(f"{STUDIES}/{study['id']}").json()
    assert shown["state"] == "running" and shown["trial_counts"]["waiting"] == 0


def test_admin_sees_and_manages_every_study(live_api: LiveApi) -> None:
    study = create_study(live_api.as_("alice"))
    admin = live_api.as_("root")
    assert admin.get(f"{STUDIES}/{study['id']}").status_code == 200
    listed = admin.get(STUDIES, params={"limit": 500}).json()
    assert study["id"] in [s["id"] for s in listed["data"]]
    by_name = admin.get(f"{STUDIES}/by-name/{study['name']}", params={"owner": "alice"})
    assert by_name.json()["id"] == study["id"]
    assert admin.post(f"{STUDIES}/{study['id']}/pause").json()["state"] == "paused"
    # An owner query from a user is ignored: it is always their own namespace.
    bob = live_api.as_("bob")
    assert (
        bob.get(f"{STUDIES}/by-name/{study['name']}", params={"owner": "alice"}).status_code == 404
    )


def test_revoked_token_is_401(live_api: LiveApi) -> None:
    settings = load_settings(database_url=live_api.database_url)
    engine = make_engine(live_api.database_url, pool_size=1, max_overflow=0)
    try:
        with session_scope(engine) as session:
            token = create_token(session, scope="user", owner="carol", secret=settings.token_secret)
        client = live_api.client({"Authorization": f"Bearer {token}"})
        assert client.get(STUDIES).status_code == 200
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE tf_api_tokens SET revoked_at = now() WHERE token_hash = :h"),
                {"h": hash_token(settings.token_secret, token)},
            )
        assert client.get(STUDIES).status_code == 401
        client.close()
    finally:
        engine.dispose()


def test_tokens_are_stored_only_as_hashes(live_api: LiveApi) -> None:
    assert live_api.as_("alice").get(STUDIES).status_code == 200
    engine = make_engine(live_api.database_url, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as conn:
            hashes = conn.execute(sa.text("SELECT token_hash FROM tf_api_tokens")).scalars().all()
            last_used = conn.execute(
                sa.text("SELECT last_used_at FROM tf_api_tokens WHERE owner = 'alice'")
            ).scalar_one()
    finally:
        engine.dispose()
    assert last_used is not None
    secret = load_settings(database_url=live_api.database_url).token_secret
    for token in live_api.tokens.values():
        assert token.startswith("tf_")
        assert token not in hashes
        assert hash_token(secret, token) in hashes


def test_chosen_token_is_idempotent_for_its_owner(live_api: LiveApi) -> None:
    secret = load_settings(database_url=live_api.database_url).token_secret
    engine = make_engine(live_api.database_url, pool_size=1, max_overflow=0)
    value = "deployment-worker-secret-0123456789"
    try:
        for _ in range(2):
            with session_scope(engine) as session:
                assert (
                    create_token(session, scope="worker", owner="fleet", secret=secret, value=value)
                    == value
                )
        with pytest.raises(Conflict), session_scope(engine) as session:
            create_token(session, scope="admin", owner="fleet", secret=secret, value=value)
    finally:
        engine.dispose()
    answer = live_api.client({"Authorization": f"Bearer {value}"}).get(STUDIES)
    assert answer.status_code == 403  # a worker token: authenticated, not allowed here
