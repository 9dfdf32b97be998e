"""`tunefleet migrate`: Optuna's schema and ours, idempotently, one migrator at a time."""

from __future__ import annotations

import fcntl
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine, make_url

from migrations import SCRIPT_LOCATION, VERSION_TABLE
from service.db import engine_kwargs, is_connection_error, make_engine, redact_url
from service.errors import DatabaseUnavailable, TuneFleetError

# Any constant works; it only has to be the same for every migrator.
_ADVISORY_LOCK_KEY = 0x7475_6E65  # "tune"

log = logging.getLogger(__name__)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    """The newest revision of TuneFleet's migrations."""
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    """The revision our version table records, or None on a database we never migrated."""
    ctx = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return ctx.get_current_revision()


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[Connection]:
    """Serialise migrators: a PostgreSQL advisory lock, or a file lock beside a SQLite file."""
    url = engine.url
    if url.get_backend_name() == "postgresql":
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _ADVISORY_LOCK_KEY})
            conn.commit()
            try:
                yield conn
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _ADVISORY_LOCK_KEY})
                conn.commit()
        return
    database = url.database
    if not database or database == ":memory:":
        with engine.connect() as conn:
            yield conn
        return
    Path(database).parent.mkdir(parents=True, exist_ok=True)
    with open(f"{database}.migrate-lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            with engine.connect() as conn:
                yield conn
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _upgrade_optuna(url: str) -> None:
    """Create Optuna's tables on an empty database, or upgrade them to this Optuna's schema."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        storage = optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs(url, pool_size=2, max_overflow=2),
            skip_compatibility_check=True,
        )
    try:
        if storage.get_current_version() != storage.get_head_version():
            log.info("upgrading Optuna's schema to %s", storage.get_head_version())
            storage.upgrade()
    finally:
        storage.engine.dispose()


def _upgrade_tunefleet(connection: Connection, url: str) -> None:
    cfg = alembic_config(url)
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")
    connection.commit()
    if connection.dialect.name == "postgresql":
        _keep_tokens_private(connection)


def _keep_tokens_private(connection: Connection) -> None:
    """Only the owner reads the token table: a read-only role made before the tables
    (whose default privileges cover every new table) loses it here, on every migrate."""
    grantees = connection.execute(
        sa.text(
            "SELECT DISTINCT grantee FROM information_schema.role_table_grants "
            "WHERE table_schema = current_schema() AND table_name = 'tf_api_tokens' "
            "AND grantee <> current_user"
        )
    ).scalars()
    for grantee in ["PUBLIC", *grantees]:
        name = (
            grantee
            if grantee == "PUBLIC"
            else connection.dialect.identifier_preparer.quote(grantee)
        )
        connection.execute(sa.text(f"REVOKE ALL ON tf_api_tokens FROM {name}"))
    connection.commit()


class NotMigrated(TuneFleetError):
    """The database is reachable but its schema is missing or older than this release."""

    status_code = 503
    code = "not_migrated"


def check_database(url: str) -> str:
    """Make sure the API can start on this database: reachable, and both schemas at head.

    Returns TuneFleet's revision; raises DatabaseUnavailable or NotMigrated with the fix.
    """
    engine = make_engine(url, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as conn:
            revision = current_revision(conn)
            ctx = MigrationContext.configure(conn)  # Optuna's own alembic_version
            optuna_revision = ctx.get_current_revision()
    except sa.exc.SQLAlchemyError as error:
        reason = str(getattr(error, "orig", error)).strip().splitlines()[0]
        raise DatabaseUnavailable(
            f"cannot reach the database at TUNEFLEET_DATABASE_URL={redact_url(url)}: {reason}"
        ) from error
    finally:
        engine.dispose()
    if revision != head_revision() or optuna_revision is None:
        raise NotMigrated(
            f"the database at TUNEFLEET_DATABASE_URL={redact_url(url)} is "
            + ("not migrated" if revision is None else f"at revision {revision}")
            + f" (this release needs {head_revision()}): run `tunefleet migrate` first"
        )
    return revision


def migrate(url: str) -> str:
    """Bring Optuna's schema and ours to head; safe to run twice, or twice at once.

    Returns TuneFleet's revision after the upgrade.
    """
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = make_engine(url, pool_size=1, max_overflow=0)
    try:
        with _migration_lock(engine) as conn:
            _upgrade_optuna(url)
            _upgrade_tunefleet(conn, url)
            revision = current_revision(conn)
    except sa.exc.SQLAlchemyError as error:
        if is_connection_error(error):
            reason = str(getattr(error, "orig", error)).strip().splitlines()[0]
            raise DatabaseUnavailable(
                f"cannot reach the database at TUNEFLEET_DATABASE_URL={redact_url(url)}: {reason}"
            ) from error
        raise
    finally:
        engine.dispose()
    assert revision is not None
    return revision
