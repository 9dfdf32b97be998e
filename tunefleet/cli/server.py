"""`tunefleet migrate` and `tunefleet serve`: the API process. The service is imported lazily."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.console import Console

from tunefleet.cli.errors import service_errors

err = Console(stderr=True, soft_wrap=True)

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="Database URL; default TUNEFLEET_DATABASE_URL, else SQLite in ~/.tunefleet.",
        show_default=False,
    ),
]


def service_settings(**overrides):
    """The service's Settings: TUNEFLEET_* with the options given on the command line."""
    from service.config import load_settings

    return load_settings(**{k: v for k, v in overrides.items() if v is not None})


def migrate(database_url: DatabaseUrl = None) -> None:
    """Create or upgrade Optuna's schema and TuneFleet's tables (idempotent, safe concurrently)."""
    with service_errors(database_url_option=database_url is not None):
        from service.db import redact_url
        from service.migrate import migrate as run_migrate

        settings = service_settings(database_url=database_url)
        settings.ensure_dirs()
        revision = run_migrate(settings.database_url)
    err.print(f"database {redact_url(settings.database_url)} is at revision {revision}")


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [TUNEFLEET_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [TUNEFLEET_PORT].")] = None,
    workers: Annotated[int, typer.Option(help="API processes (uvicorn workers).")] = 1,
    database_url: DatabaseUrl = None,
) -> None:
    """Serve the REST API (uvicorn). Run `tunefleet migrate` first."""
    with service_errors(database_url_option=database_url is not None):
        import uvicorn

        from service.config import require_strong_token_secret
        from service.migrate import check_database

        settings = service_settings(host=host, port=port, database_url=database_url)
        require_strong_token_secret(settings)
        settings.ensure_dirs()
        check_database(settings.database_url)
        # The app factory reads the environment, also in uvicorn's worker processes.
        os.environ["TUNEFLEET_DATABASE_URL"] = settings.database_url
        uvicorn.run(
            "service.main:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=workers,
            log_level="info",
            access_log=False,
        )
