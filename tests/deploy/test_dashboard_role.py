"""deploy/postgres/dashboard-role.sql on a real PostgreSQL: the dashboard reads, never writes."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import optuna
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.conftest import ADMIN_URL

from .conftest import DEPLOY

ROLE_SQL = DEPLOY / "postgres" / "dashboard-role.sql"
PASSWORD = "dashboard-test-password"


def _run_role_sql(database_url: str) -> None:
    psql = shutil.which("psql")
    if psql is None:
        pytest.fail("psql is needed to run deploy/postgres/dashboard-role.sql", pytrace=False)
    subprocess.run(
        [
            psql,
            database_url,
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            f"dashboard_password={PASSWORD}",
            "-f",
            str(ROLE_SQL),
        ],
        check=True,
        capture_output=True,
        text=True,
    )


def _dashboard_url(database_url: str) -> str:
    url = make_url(database_url).set(
        drivername="postgresql+psycopg", username="dashboard_ro", password=PASSWORD
    )
    return url.render_as_string(hide_password=False)


def _owner_url(database_url: str) -> str:
    url = make_url(database_url).set(drivername="postgresql+psycopg")
    return url.render_as_string(hide_password=False)


def _role_exists() -> bool:
    engine = sa.create_engine(ADMIN_URL, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        found = conn.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = 'dashboard_ro'"))
        exists = found.first() is not None
    engine.dispose()
    return exists


@pytest.fixture
def dashboard_role_cleanup() -> Iterator[list[str]]:
    """Databases the role gets grants in; the role is dropped afterwards if this test made it."""
    existed = _role_exists()
    databases: list[str] = []
    yield databases
    if existed:
        return
    for database_url in databases:
        engine = sa.create_engine(
            database_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool
        )
        with engine.connect() as conn:
            conn.execute(sa.text("DROP OWNED BY dashboard_ro"))
        engine.dispose()
    engine = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        conn.execute(sa.text("DROP ROLE IF EXISTS dashboard_ro"))
    engine.dispose()


def _assert_dashboard_reads_but_cannot_write(database_url: str) -> None:
    owner = optuna.create_study(storage=_owner_url(database_url), study_name="role-check")
    trial = owner.ask()
    trial.report(0.25, step=1)
    owner.tell(trial, 0.5)

    storage = optuna.storages.RDBStorage(_dashboard_url(database_url))
    assert [s.study_name for s in storage.get_all_studies()] == ["role-check"]
    (seen,) = optuna.load_study(study_name="role-check", storage=storage).get_trials()
    assert seen.value == 0.5 and seen.intermediate_values == {1: 0.25}

    study_id = storage.get_study_id_from_name("role-check")
    with pytest.raises(optuna.exceptions.StorageInternalError):
        storage.set_study_user_attr(study_id, "note", "written by the dashboard")
    assert owner.user_attrs == {}
    storage.engine.dispose()


def test_role_made_before_migration_reads_the_tables_created_later(pg_url, dashboard_role_cleanup):
    # The compose path: the postgres init script runs before `tunefleet migrate`.
    from service.migrate import migrate

    dashboard_role_cleanup.append(pg_url)
    _run_role_sql(pg_url)
    migrate(pg_url)
    _assert_dashboard_reads_but_cannot_write(pg_url)


def test_role_made_after_migration_reads_existing_tables_and_can_be_made_again(
    migrated_pg_url, dashboard_role_cleanup
):
    # The managed-database path: the owner runs the script on a migrated database.
    dashboard_role_cleanup.append(migrated_pg_url)
    _run_role_sql(migrated_pg_url)
    _run_role_sql(migrated_pg_url)
    _assert_dashboard_reads_but_cannot_write(migrated_pg_url)


def _dashboard_can_read_tokens(database_url: str) -> bool:
    engine = sa.create_engine(_dashboard_url(database_url), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT token_hash FROM tf_api_tokens"))
        return True
    except sa.exc.ProgrammingError as error:
        assert "permission denied" in str(error)
        return False
    finally:
        engine.dispose()


def test_the_dashboard_role_cannot_read_the_token_table_made_before_migration(
    pg_url, dashboard_role_cleanup
):
    from service.migrate import migrate

    dashboard_role_cleanup.append(pg_url)
    _run_role_sql(pg_url)
    migrate(pg_url)
    assert not _dashboard_can_read_tokens(pg_url)
    _assert_dashboard_reads_but_cannot_write(pg_url)


def test_the_dashboard_role_cannot_read_the_token_table_made_after_migration(
    migrated_pg_url, dashboard_role_cleanup
):
    dashboard_role_cleanup.append(migrated_pg_url)
    _run_role_sql(migrated_pg_url)
    assert not _dashboard_can_read_tokens(migrated_pg_url)
