"""Liveness and readiness of the API on its own migrated database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from service.migrate import head_revision, migrate
from tests.service.api.conftest import in_process_app


@pytest.fixture
def api(migrated_pg_url: str, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(in_process_app(migrated_pg_url, tmp_path)) as client:
        yield client


def test_healthz_and_readyz_on_a_migrated_database(api: TestClient) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["revision"] == head_revision()


def test_readyz_is_503_when_the_schema_falls_behind_then_200_after_migrate(
    api: TestClient, migrated_pg_url: str
) -> None:
    from alembic import command

    from service.migrate import alembic_config

    engine = sa.create_engine(migrated_pg_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:  # as if an older release had migrated this database
        cfg = alembic_config(migrated_pg_url)
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0001_initial")
    engine.dispose()
    answer = api.get("/readyz")
    assert answer.status_code == 503
    assert "tunefleet migrate" in answer.json()["message"]
    migrate(migrated_pg_url)
    assert api.get("/readyz").status_code == 200
