"""The database engine and the one session scope every write goes through."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session

from service.errors import DatabaseUnavailable

__all__ = [
    "DatabaseUnavailable",
    "engine_kwargs",
    "is_connection_error",
    "make_engine",
    "redact_url",
    "session_scope",
]


def redact_url(url: str) -> str:
    """The URL with its password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except exc.ArgumentError:
        return "<unparsable URL>"


def engine_kwargs(url: str, *, pool_size: int = 10, max_overflow: int = 20) -> dict:
    """Engine options for a URL; shared by our engine and Optuna's RDBStorage."""
    if url.startswith("sqlite"):
        # One file, several threads of one process: let SQLite wait for its lock.
        return {"connect_args": {"check_same_thread": False, "timeout": 30}}
    return {
        "pool_pre_ping": True,  # a server restart must not poison the pool
        "pool_recycle": 1800,
        "pool_size": pool_size,
        "max_overflow": max_overflow,
        "pool_timeout": 10,
        "connect_args": {"connect_timeout": 5},
    }


def make_engine(url: str, *, pool_size: int = 10, max_overflow: int = 20) -> Engine:
    """An engine with pool settings that survive database restarts."""
    engine = sa.create_engine(
        url, **engine_kwargs(url, pool_size=pool_size, max_overflow=max_overflow)
    )
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

    return engine


def is_connection_error(error: BaseException) -> bool:
    """Whether an exception means the database is unreachable rather than the query wrong."""
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, exc.OperationalError | exc.InterfaceError):
        # Lost or refused connections, and SQLite's "database is locked": all retryable.
        return True
    if isinstance(error, exc.TimeoutError):  # pool exhausted
        return True
    cause = error.__cause__ or error.__context__
    return cause is not None and cause is not error and is_connection_error(cause)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success, rolls back on error, and turns an
    unreachable database into DatabaseUnavailable."""
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except Exception as error:
        with suppress(exc.SQLAlchemyError):
            session.rollback()
        if is_connection_error(error):
            raise DatabaseUnavailable(
                "the database cannot be reached right now; retry shortly"
            ) from error
        raise
    finally:
        session.close()
