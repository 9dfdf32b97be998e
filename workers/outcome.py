"""How a trial ended, as the loop tells the service: the exceptions that end a
trial early, which errors are prunes, what the owner is told of a failure, and
the values, attrs and artifact of a result."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

__all__ = [
    "TrialAbandoned",
    "WorkerInterrupted",
    "failure_reason",
    "is_pruned",
    "unpack_result",
]

log = logging.getLogger("tunefleet.worker")


class WorkerInterrupted(BaseException):
    """Second signal while a trial runs: drop it now. A BaseException, like
    KeyboardInterrupt, so that a trial's own ``except Exception`` lets it through."""


class TrialAbandoned(BaseException):
    """The service said stop (study paused or stopped, or the lease is gone)."""


def is_pruned(error: BaseException) -> bool:
    """Whether an exception is a TrialPruned, the engine's or Optuna's, without
    importing either (the engine pulls in torch)."""
    return any(cls.__name__ == "TrialPruned" for cls in type(error).__mro__)


def failure_reason(error: BaseException) -> tuple[str, str]:
    """(what the owner sees, the full detail for the log and admins).

    An engine error carries a ``code`` and a ``public`` message that names only
    what the spec says; any other exception may hold paths and names found on
    this worker, so the owner sees only its type.
    """
    detail = f"{type(error).__name__}: {error}"
    code, public = getattr(error, "code", None), getattr(error, "public", None)
    if isinstance(code, str) and isinstance(public, str):
        return f"{code}: {public}", detail
    return (
        f"worker_error: the trial raised {type(error).__name__} (an admin can read the "
        "detail in the trial and the worker's log)",
        detail,
    )


def unpack_result(result: Any) -> tuple[dict[str, float], dict[str, Any], str | None]:
    """(values, attrs, artifact) of a TrialResult, or of a mapping with the same keys."""
    if isinstance(result, Mapping):
        values, attrs, artifact = result["values"], result.get("attrs"), result.get("artifact")
    else:
        values = result.values
        attrs = getattr(result, "attrs", None)
        artifact = getattr(result, "artifact", None)
    values = {str(k): float(v) for k, v in values.items()}
    attrs = dict(attrs or {})
    if any(not math.isfinite(v) for v in values.values()):
        log.warning("non-finite values %s: the service will fail the trial", values)
    return values, attrs, None if artifact is None else str(artifact)
