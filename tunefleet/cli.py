"""The `tunefleet` command."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from tunefleet.cli_api import ApiCommandError, study_app
from tunefleet.cli_api import trials as trials_command

app = typer.Typer(
    name="tunefleet",
    help="Hyperparameter search for transfer learning: the API, the workers and the demo.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
token_app = typer.Typer(help="Create, list and revoke API tokens.", no_args_is_help=True)
app.add_typer(token_app, name="token")
app.add_typer(study_app, name="study")
app.command("trials")(trials_command)

err = Console(stderr=True, soft_wrap=True)

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="Database URL; default TUNEFLEET_DATABASE_URL, else SQLite in ~/.tunefleet.",
        show_default=False,
    ),
]


class CliError(Exception):
    """A failure the user can fix; printed as one line, exit code 1."""


def fail(message: str) -> NoReturn:
    raise CliError(message)


def _service_settings(**overrides):
    from service.config import load_settings

    return load_settings(**{k: v for k, v in overrides.items() if v is not None})


@app.command()
def migrate(database_url: DatabaseUrl = None) -> None:
    """Create or upgrade Optuna's schema and TuneFleet's tables (idempotent, safe concurrently)."""
    from service.migrate import migrate as run_migrate

    settings = _service_settings(database_url=database_url)
    settings.ensure_dirs()
    revision = run_migrate(settings.database_url)
    from service.db import redact_url

    err.print(f"database {redact_url(settings.database_url)} is at revision {revision}")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [TUNEFLEET_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [TUNEFLEET_PORT].")] = None,
    workers: Annotated[int, typer.Option(help="API processes (uvicorn workers).")] = 1,
    database_url: DatabaseUrl = None,
) -> None:
    """Serve the REST API (uvicorn). Run `tunefleet migrate` first."""
    import os

    import uvicorn

    from service.migrate import check_database

    settings = _service_settings(host=host, port=port, database_url=database_url)
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


@app.command()
def worker(
    service: Annotated[
        str | None, typer.Option(help="URL of the TuneFleet API [TUNEFLEET_SERVICE_URL].")
    ] = None,
    token: Annotated[
        str | None, typer.Option(help="A worker-scope token [TUNEFLEET_TOKEN].")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="cuda:N or cpu; default auto [TUNEFLEET_DEVICE].")
    ] = None,
    max_trials: Annotated[
        int | None, typer.Option(min=1, help="Exit after this many trials [TUNEFLEET_MAX_TRIALS].")
    ] = None,
    idle_exit: Annotated[
        float | None,
        typer.Option(help="Exit after this many seconds without work [TUNEFLEET_IDLE_EXIT_S]."),
    ] = None,
    worker_id: Annotated[
        str | None, typer.Option(help="Default hostname-pid-device [TUNEFLEET_WORKER_ID].")
    ] = None,
    objective: Annotated[
        str | None,
        typer.Option(hidden=True, help="module:function run instead of the trial engine (tests)."),
    ] = None,
) -> None:
    """Run one worker: lease trials, fine-tune, report. One process per GPU.

    A first SIGTERM/SIGINT finishes the current trial and exits; a second one
    hands the trial back (it is re-queued) and exits at once.
    """
    from workers.loop import run_worker_command

    code = run_worker_command(
        service_url=service,
        token=token,
        device=device,
        max_trials=max_trials,
        idle_exit_s=idle_exit,
        worker_id=worker_id,
        objective=objective,
    )
    if code:
        raise typer.Exit(code)


@app.command()
def demo(
    trials: Annotated[int, typer.Option(min=1, help="Trials in the demo study.")] = 24,
    epochs: Annotated[int, typer.Option(min=1, help="Fine-tuning epochs per trial.")] = 4,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes to start.")] = 2,
    seed: Annotated[int, typer.Option(help="Seed of the sampler and the training.")] = 0,
    data_dir: Annotated[
        Path | None, typer.Option(help="Where the demo keeps its files [TUNEFLEET_DATA_DIR].")
    ] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Run the built-in study end to end: API, workers, live progress, Pareto front."""
    from tunefleet.demo import run_demo

    run_demo(
        Console(),
        trials=trials,
        epochs=epochs,
        workers=workers,
        data_dir=data_dir,
        database_url=database_url,
        seed=seed,
    )


@token_app.command("create")
def token_create(
    scope: Annotated[str, typer.Option(help="admin, user or worker.")],
    owner: Annotated[str, typer.Option(help="Who the token acts for.")],
    value: Annotated[
        str | None,
        typer.Option(help="Register this token instead of generating one (for deployments)."),
    ] = None,
    expires_in: Annotated[
        str | None,
        typer.Option(help="Lifetime, e.g. 30d, 12h or 2w; by default it never expires."),
    ] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create a token; it is printed alone on the last line, and stored only as a hash."""
    from service import auth

    if scope not in ("admin", "user", "worker"):
        fail(f"--scope must be admin, user or worker, not {scope!r}")
    lifetime = auth.parse_duration(expires_in) if expires_in else None
    with _token_session(database_url) as (session, settings):
        issued = auth.issue_token(
            session,
            scope=scope,
            owner=owner,
            value=value,
            secret=settings.token_secret,
            expires_in=lifetime,
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
    from rich.table import Table

    from service import auth

    table = Table("id", "owner", "scope", "created", "last used", "expires", "state")
    with _token_session(database_url) as (session, _settings):
        rows = [r for r in auth.list_tokens(session) if owner is None or r.owner == owner]
        for row in rows:
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
    from service import auth

    with _token_session(database_url) as (session, _settings):
        row = auth.revoke_token(session, token_id)
        err.print(f"revoked token {row.id} ({row.scope} token of {row.owner})")


@contextmanager
def _token_session(database_url: str | None):
    from service.db import make_engine, session_scope

    settings = _service_settings(database_url=database_url)
    engine = make_engine(settings.database_url, pool_size=2, max_overflow=0)
    try:
        with session_scope(engine) as session:
            yield session, settings
    finally:
        engine.dispose()


def _when(moment) -> str:
    return "-" if moment is None else f"{moment:%Y-%m-%d %H:%M}"


def _token_state(row) -> str:
    from datetime import UTC, datetime

    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at is not None and row.expires_at <= datetime.now(UTC):
        return "expired"
    return "active"


def main() -> None:
    """Entry point: run the app, turning known errors into one line and a non-zero exit."""
    from service.config import SettingsError
    from service.errors import TuneFleetError

    try:
        app()
    except (CliError, ApiCommandError) as error:
        err.print(f"[red]error:[/red] {escape(str(error))}", highlight=False)
        sys.exit(1)
    except SettingsError as error:
        err.print(f"[red]error:[/red] bad setting: {escape(str(error))}", highlight=False)
        sys.exit(2)
    except TuneFleetError as error:
        err.print(f"[red]error:[/red] {escape(error.message)}", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
