"""The plumbing of the study spec: its model base, its errors and their paths.

Public names are re-exported by `tunefleet.spec`; import them from there.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

Loc = tuple[str | int, ...]
NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"


class SpecError(ValueError):
    """A spec, a parameter set or a spec file that cannot be used; `errors` has the paths."""

    def __init__(self, errors: list[dict[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{e['path'] or '(spec)'}: {e['message']}" for e in errors))

    @classmethod
    def from_validation_error(cls, exc: ValidationError, *, prefix: Loc = ()) -> SpecError:
        return cls(
            [
                {"path": field_path(prefix + tuple(e["loc"])), "message": e["msg"]}
                for e in exc.errors(include_url=False)
            ]
        )


_UNION_FIELDS = {"sampler", "pruner"}
_UNION_TAGS = {"float", "int", "categorical"} | {
    "tpe",
    "nsga2",
    "random",
    "gp",
    "cmaes",
    "qmc",
    "grid",
    "median",
    "hyperband",
    "successive_halving",
    "none",
}


def clean_loc(loc: Loc) -> list[str | int]:
    """`("body", "search_space", "lr", "float", "low")` -> `["search_space", "lr", "low"]`.

    Drops the request part (`body`, `query`) and the tags pydantic inserts for
    discriminated unions, so the location is the one a user edits in the spec.
    """
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    out: list[str | int] = []
    for i, part in enumerate(parts):
        parent = parts[i - 1] if i >= 1 else None
        grandparent = parts[i - 2] if i >= 2 else None
        is_tag = part in _UNION_TAGS and (parent in _UNION_FIELDS or grandparent == "search_space")
        if not is_tag:
            out.append(part)
    return out


def field_path(loc: Loc) -> str:
    """The dotted path of a pydantic error location: `search_space.lr.low`."""
    return ".".join(str(part) for part in clean_loc(loc))


def show_value(value: Any, limit: int = 80) -> str:
    """repr() for messages, cut short: a client may send megabytes of text."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def custom_error(message: str) -> PydanticCustomError:
    """An error whose message pydantic shows as it is (no "Value error, " prefix)."""
    return PydanticCustomError("invalid_spec", "{reason}", {"reason": message})


class Problems(list):
    """Problems found in a model, each at its own location relative to that model."""

    def add(self, loc: Loc, message: str, value: Any = None) -> None:
        self.append((loc, message, value))

    def raise_if_any(self, title: str) -> None:
        """Raise one ValidationError holding every problem (pydantic nests the locations)."""
        if self:
            raise ValidationError.from_exception_data(
                title,
                [
                    InitErrorDetails(
                        type=custom_error(msg),
                        loc=loc,
                        input=value,
                    )
                    for loc, msg, value in self
                ],
            )


class SpecModel(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, str_max_length=1024)
