"""Liveness and readiness of a real API process."""

from __future__ import annotations

import httpx

from service.migrate import head_revision


def test_healthz_and_readyz_on_a_migrated_database(api_server):
    assert httpx.get(f"{api_server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{api_server.url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["revision"] == head_revision()


def test_readyz_is_503_when_the_schema_falls_behind_then_200_after_migrate(api_server):
    import sqlalchemy as sa
    from alembic import command

    from service.migrate import alembic_config, migrate

    engine = sa.create_engine(api_server.database_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:  # as if an older release had migrated this database
        cfg = alembic_config(api_server.database_url)
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0001_initial")
    engine.dispose()
    answer = httpx.get(f"{api_server.url}/readyz")
    assert answer.status_code == 503
    assert "tunefleet migrate" in answer.json()["message"]
    migrate(api_server.database_url)
    assert httpx.get(f"{api_server.url}/readyz").status_code == 200
