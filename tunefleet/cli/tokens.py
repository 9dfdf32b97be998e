"""`tunefleet token create|list|revoke`: API tokens, straight in the service's database."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from tunefleet.cli.errors import fail, service_errors
from tunefleet.cli.server import DatabaseUrl, service_settings

token_app = typer.Typer(help="Create, list and revoke API tokens.", no_args_is_help=True)
err = Console(stderr=True, soft_wrap=True)


@contextmanager
def _token_session(database_url: str | None) -> Iterator[tuple[Any, Any]]:
    """A database session on the service's database, and its settings."""
    with service_errors():
        from service.db import make_engine, session_scope

        settings = service_settings(database_url=database_url)
        engine = make_engine(settings.database_url, pool_size=2, max_overflow=0)
        try:
            with session_scope(engine) as session:
                yield session, settings
        finally:
            engine.dispose()


@token_app.command("create")
def token_create(
    scope: Annotated[str, typer.Option(help="admin, user or worker.")],
    owner: Annotated[str, typer.Option(help="Who the token acts for.")],
    value: Annotated[
        str | None,
        typer.Option(help="Register this token instead of generating one (for deployments)."),
    ] = None,
    value_env: Annotated[
        str | None,
        typer.Option(
            help="Register the token held in this environment variable: as --value, "
            "without the token on the command line (where `ps` shows it)."
        ),
    ] = None,
    expires_in: Annotated[
        str | None,
        typer.Option(help="Lifetime, e.g. 30d, 12h or 2w; by default it never expires."),
    ] = None,
    studies_of: Annotated[
        str | None,
        typer.Option(help="Worker tokens: lease only this owner's studies (a private fleet)."),
    ] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create a token; it is printed alone on the last line, and stored only as a hash."""
    if scope not in ("admin", "user", "worker"):
        fail(f"--scope must be admin, user or worker, not {scope!r}")
    if value_env is not None:
        if value is not None:
            fail("give --value or --value-env, not both")
        value = os.environ.get(value_env)
        if not value:
            fail(f"--value-env {value_env}: that environment variable is not set or empty")
    with _token_session(database_url) as (session, settings):
        from service import auth
        from service.config import require_strong_token_secret

        require_strong_token_secret(settings)
        lifetime = auth.parse_duration(expires_in) if expires_in else None
        issued = auth.issue_token(
            session,
            scope=scope,
            owner=owner,
            value=value,
            secret=settings.token_secret,
            expires_in=lifetime,
            studies_of=studies_of,
        )
        expiry = issued.row.expires_at
    until = f", valid until {expiry:%Y-%m-%d %H:%M} UTC" if expiry else ""
    article = "an" if scope == "admin" else "a"
    err.print(
        f"created {article} {scope} token for {owner}{until}; keep it secret, it is not shown again"
    )
    print(issued.value)


@token_app.command("list")
def token_list(
    owner: Annotated[str | None, typer.Option(help="Only this owner's tokens.")] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Every token: id, owner, scope, created, last used, expiry; never the token itself."""
    table = Table("id", "owner", "scope", "created", "last used", "expires", "state")
    with _token_session(database_url) as (session, _settings):
        from service import auth

        for row in auth.list_tokens(session):
            if owner is not None and row.owner != owner:
                continue
            table.add_row(
                str(row.id),
                row.owner,
                row.scope,
                _when(row.created_at),
                _when(row.last_used_at),
                _when(row.expires_at),
                _token_state(row),
            )
    Console(soft_wrap=False).print(table)


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[int, typer.Argument(help="The token's id, from `tunefleet token list`.")],
    database_url: DatabaseUrl = None,
) -> None:
    """Revoke a token at once: requests with it get 401, a worker using it stops."""
    with _token_session(database_url) as (session, _settings):
        from service import auth

        row = auth.revoke_token(session, token_id)
        err.print(f"revoked token {row.id} ({row.scope} token of {row.owner})")


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else f"{moment:%Y-%m-%d %H:%M}"


def _token_state(row: Any) -> str:
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at is not None and row.expires_at <= datetime.now(UTC):
        return "expired"
    return "active"
