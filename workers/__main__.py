"""`python -m workers ...` is `tunefleet worker ...` (without importing the service)."""

import typer

from tunefleet.cli.worker import worker

# A one-command app: the usage line reads `python -m workers [OPTIONS]`.
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command()(worker)
app(prog_name="python -m workers")
