"""Liveness and readiness of a real API process."""

from __future__ import annotations

import httpx

from service.migrate import head_revision


def test_healthz_and_readyz_on_a_migrated_database(api_server):
    assert httpx.get(f"{api_server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{api_server.url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["revision"] == head_revision()


def test_readyz_is_503_until_migrated(pg_url, api_server_factory):
    # Optuna's tables are needed to start; ours are not there yet.
    import optuna

    from service.migrate import migrate

    optuna.storages.RDBStorage(pg_url).engine.dispose()
    server = api_server_factory(pg_url)
    answer = httpx.get(f"{server.url}/readyz")
    assert answer.status_code == 503
    assert "tunefleet migrate" in answer.json()["message"]
    migrate(pg_url)
    assert httpx.get(f"{server.url}/readyz").status_code == 200
