"""Reading a study spec file (YAML or JSON, or stdin) and validating it before it is sent."""

from __future__ import annotations

import sys
from pathlib import Path

from tunefleet.cli.errors import CliError


def read_spec(path: str) -> dict:
    """The spec in ``path`` (``-`` for stdin), validated, as the JSON the API takes."""
    from tunefleet.spec import SpecError, StudySpec

    text = sys.stdin.read() if path == "-" else _read_file(path)
    try:
        spec = StudySpec.from_text(text)
    except SpecError as error:
        raise CliError(f"{path}: {error}") from None
    return spec.model_dump(mode="json", exclude_none=True)


def _read_file(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as error:
        raise CliError(f"cannot read {path}: {error.strerror}") from None
