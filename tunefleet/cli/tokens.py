"""`tunefleet token create`: API tokens, written straight to the service's database."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from tunefleet.cli.errors import fail, service_errors
from tunefleet.cli.server import DatabaseUrl, service_settings

token_app = typer.Typer(help="Create API tokens.", no_args_is_help=True)
err = Console(stderr=True, soft_wrap=True)


@token_app.command("create")
def token_create(
    scope: Annotated[str, typer.Option(help="admin, user or worker.")],
    owner: Annotated[str, typer.Option(help="Who the token acts for.")],
    value: Annotated[
        str | None,
        typer.Option(help="Register this token instead of generating one (for deployments)."),
    ] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create a token; it is printed alone on the last line, and stored only as a hash."""
    if scope not in ("admin", "user", "worker"):
        fail(f"--scope must be admin, user or worker, not {scope!r}")
    with service_errors():
        from service import auth
        from service.db import make_engine, session_scope

        settings = service_settings(database_url=database_url)
        engine = make_engine(settings.database_url, pool_size=1, max_overflow=0)
        try:
            with session_scope(engine) as session:
                token = auth.create_token(
                    session, scope=scope, owner=owner, value=value, secret=settings.token_secret
                )
        finally:
            engine.dispose()
    err.print(f"created a {scope} token for {owner}; keep it secret, it is not shown again")
    print(token)
