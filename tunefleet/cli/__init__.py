"""The `tunefleet` command: the one place that brings the service and the workers together.

Each command imports what it runs inside its own function, so that
`tunefleet worker` never loads the service (FastAPI, SQLAlchemy, Alembic) and
`tunefleet serve` never loads torch; tests/test_layout.py holds both.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape

from tunefleet.cli.demo import demo
from tunefleet.cli.errors import CliError
from tunefleet.cli.models import models, prefetch
from tunefleet.cli.server import migrate, serve
from tunefleet.cli.studies import study_app, trials
from tunefleet.cli.tokens import token_app
from tunefleet.cli.worker import worker

__all__ = ["app", "main"]

app = typer.Typer(
    name="tunefleet",
    help="Hyperparameter search for transfer learning: the API, the workers and the demo.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command()(migrate)
app.command()(serve)
app.command()(worker)
app.command()(demo)
app.add_typer(token_app, name="token")
app.add_typer(study_app, name="study")
app.command("trials")(trials)
app.command()(prefetch)
app.command()(models)

err = Console(stderr=True, soft_wrap=True)


def main() -> None:
    """Entry point: run the app, turning known errors into one line and a non-zero exit."""
    try:
        app()
    except CliError as error:
        err.print(f"[red]error:[/red] {escape(str(error))}", highlight=False)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
