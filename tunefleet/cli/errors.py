"""How the command reports a failure the user can fix: one line, a non-zero exit code."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn


class CliError(Exception):
    """A failure the user can fix; printed as one line with ``exit_code``."""

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def fail(message: str) -> NoReturn:
    raise CliError(message)


@contextmanager
def service_errors(*, database_url_option: bool = False) -> Iterator[None]:
    """Turn the service's setting and domain errors into :class:`CliError`.

    With ``database_url_option`` (the URL came from --database-url), a message
    naming TUNEFLEET_DATABASE_URL names the option instead.
    Imports the service, so only the commands that run it use this.
    """
    from service.config import SettingsError
    from service.errors import TuneFleetError

    def named(message: str) -> str:
        if database_url_option:
            return message.replace("TUNEFLEET_DATABASE_URL=", "--database-url ")
        return message

    try:
        yield
    except SettingsError as error:
        raise CliError(f"bad setting: {named(str(error))}", exit_code=2) from None
    except TuneFleetError as error:
        raise CliError(named(error.message)) from None
