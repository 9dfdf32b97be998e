"""`tunefleet migrate` on PostgreSQL and SQLite: empty, twice, concurrently."""

from __future__ import annotations

import subprocess
import sys

import optuna
import sqlalchemy as sa

from migrations import VERSION_TABLE
from service.migrate import head_revision, migrate
from tests.conftest import REPO_ROOT, subprocess_env


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _scalar(url: str, sql: str):
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(sql)).scalar_one()
    finally:
        engine.dispose()


def _assert_fully_migrated(url: str) -> None:
    tables = _tables(url)
    assert {"tf_studies", "tf_api_tokens", VERSION_TABLE} <= tables
    assert {"studies", "trials", "alembic_version", "version_info"} <= tables
    # Two separate Alembic histories: ours and Optuna's.
    assert _scalar(url, f"SELECT version_num FROM {VERSION_TABLE}") == head_revision()
    optuna_rev = _scalar(url, "SELECT version_num FROM alembic_version")
    assert optuna_rev != head_revision()
    storage = optuna.storages.RDBStorage(url)  # raises on an incompatible schema
    assert storage.get_current_version() == storage.get_head_version()
    study = optuna.create_study(storage=storage, study_name="probe", directions=["maximize"])
    study.add_trial(optuna.trial.create_trial(value=1.0))
    assert optuna.load_study(study_name="probe", storage=url).best_value == 1.0
    storage.engine.dispose()


def test_migrate_creates_both_schemas_on_empty_postgres(pg_url):
    assert migrate(pg_url) == head_revision()
    _assert_fully_migrated(pg_url)


def test_migrate_twice_is_a_no_op(pg_url):
    migrate(pg_url)
    _assert_fully_migrated(pg_url)
    assert migrate(pg_url) == head_revision()
    assert _scalar(pg_url, f"SELECT count(*) FROM {VERSION_TABLE}") == 1
    assert _scalar(pg_url, "SELECT count(*) FROM alembic_version") == 1
    # The data written by the first check survives the second migration.
    assert optuna.load_study(study_name="probe", storage=pg_url).best_value == 1.0


def test_two_migrations_at_once_both_succeed(pg_url, tmp_path):
    cmd = [sys.executable, "-m", "tunefleet", "migrate"]
    env = subprocess_env(database_url=pg_url, data_dir=tmp_path)
    procs = [
        subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert [code for code, _ in results] == [0, 0, 0], results
    _assert_fully_migrated(pg_url)
    assert _scalar(pg_url, "SELECT count(*) FROM version_info") == 1


def test_migrate_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'nested' / 'tunefleet.db'}"
    assert migrate(url) == head_revision()
    assert migrate(url) == head_revision()
    _assert_fully_migrated(url)


def test_autogenerate_sees_no_difference_and_never_optuna_tables(migrated_pg_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from migrations import include_name
    from service.models import Base

    engine = sa.create_engine(migrated_pg_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"include_name": include_name, "version_table": VERSION_TABLE}
        )
        diff = compare_metadata(ctx, Base.metadata)
    engine.dispose()
    # Optuna's tables exist in this database but are invisible to our autogenerate,
    # and the models match the migrations exactly.
    assert diff == []


def test_upgrade_keeps_the_tokens_of_an_older_database(pg_url):
    """A database made by the release before token expiry keeps its tokens working."""
    from alembic import command

    from service.auth import authenticate, create_token, hash_token
    from service.db import make_engine, session_scope
    from service.migrate import _upgrade_optuna, alembic_config

    _upgrade_optuna(pg_url)
    engine = make_engine(pg_url, pool_size=1, max_overflow=0)
    with engine.connect() as conn:
        cfg = alembic_config(pg_url)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002_leases")
        conn.commit()
        # The tokens table as that release had it: no expiry column yet.
        columns = {c["name"] for c in sa.inspect(conn).get_columns("tf_api_tokens")}
        assert "expires_at" not in columns
        conn.execute(
            sa.text(
                "INSERT INTO tf_api_tokens (token_hash, scope, owner, created_at) "
                "VALUES (:h, 'user', 'alice', now())"
            ),
            {"h": hash_token("s" * 32, "tf_made-before-the-upgrade")},
        )
        conn.commit()
    engine.dispose()

    assert migrate(pg_url) == head_revision()
    assert _scalar(pg_url, "SELECT count(*) FROM tf_api_tokens WHERE owner = 'alice'") == 1
    assert _scalar(pg_url, "SELECT count(*) FROM tf_api_tokens WHERE expires_at IS NULL") == 1
    # A token made before the upgrade and one made after both authenticate.
    engine = make_engine(pg_url, pool_size=2, max_overflow=0)
    with session_scope(engine) as session:
        token = create_token(session, scope="user", owner="bob", secret="s" * 32)
    for value, owner in [("tf_made-before-the-upgrade", "alice"), (token, "bob")]:
        with session_scope(engine) as session:
            principal = authenticate(session, secret="s" * 32, authorization=f"Bearer {value}")
            assert principal.owner == owner
    engine.dispose()
