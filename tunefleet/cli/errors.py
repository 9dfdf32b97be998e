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
def service_errors() -> Iterator[None]:
    """Turn the service's setting and domain errors into :class:`CliError`.

    Imports the service, so only the commands that run it use this.
    """
    from service.config import SettingsError
    from service.errors import TuneFleetError

    try:
        yield
    except SettingsError as error:
        raise CliError(f"bad setting: {error}", exit_code=2) from None
    except TuneFleetError as error:
        raise CliError(error.message) from None
