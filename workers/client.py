"""The HTTP client of the worker protocol, with retries that never lose a result.

Every protocol call is idempotent on the service side (a lease asked again by
the same worker is the same lease, a repeated complete is answered with the
same outcome), so a call whose answer was lost is simply sent again.
Connection errors, 5xx answers and 503 with Retry-After are retried with
capped exponential backoff and jitter; 4xx answers are definitive and raised
as :class:`Rejected`.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx

from tunefleet.protocol import (
    API_PREFIX,
    Assignment,
    HeartbeatAck,
    PruneDecision,
    TrialOutcome,
)

__all__ = ["Backoff", "Interrupted", "Rejected", "ServiceClient", "Unreachable"]

log = logging.getLogger("tunefleet.worker")

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
# The longest Retry-After honoured as given; beyond it the backoff cap applies.
RETRY_AFTER_MAX_S = 60.0


class Rejected(Exception):
    """The service answered with a definitive 4xx: retrying would not change it."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(f"{status_code}: {message}")
        self.status_code = status_code
        self.message = message


class Unreachable(Exception):
    """The service could not be reached within the attempts allowed for this call."""


class Interrupted(Exception):
    """A wait between two attempts was cut short because the worker is stopping."""


class Backoff:
    """Capped exponential delays with equal jitter: half fixed, half random."""

    def __init__(self, base_s: float = 0.5, max_s: float = 30.0) -> None:
        self.base_s = base_s
        self.max_s = max_s

    def delay(self, attempt: int) -> float:
        ceiling = min(self.max_s, self.base_s * 2 ** min(attempt, 32))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header: a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    # The service answers {"detail": {"code": ..., "message": ...}}; FastAPI's own
    # errors {"detail": "..."} or {"detail": [...]}.
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, dict) and "message" in detail:
        return str(detail["message"])
    return str(detail)[:500]


class ServiceClient:
    """One worker's connection to the TuneFleet API.

    ``abort`` is set when the worker must stop now: waits between attempts end
    at once with :class:`Interrupted`.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout_s: float = 30.0,
        backoff: Backoff | None = None,
        abort: threading.Event | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.backoff = backoff or Backoff()
        self.abort = abort or threading.Event()
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=base_url.rstrip("/") + API_PREFIX,
            headers=headers,
            timeout=timeout_s,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # The protocol ----------------------------------------------------------

    def lease(
        self, *, worker_id: str, device: str, abort: threading.Event | None = None
    ) -> Assignment | None:
        """A trial to run, or None when no study has work right now."""
        response = self._post("/leases", {"worker_id": worker_id, "device": device}, abort=abort)
        if response.status_code == 204:
            return None
        return Assignment.model_validate(response.json())

    def heartbeat(
        self, trial_id: int, *, progress: Mapping[str, Any] | None = None, attempts: int = 1
    ) -> HeartbeatAck:
        """Extend the lease; one attempt by default, the next beat is the retry."""
        body = {"progress": dict(progress)} if progress else {}
        response = self._post(f"/trials/{trial_id}/heartbeat", body, attempts=attempts)
        return HeartbeatAck.model_validate(response.json())

    def report_intermediate(self, trial_id: int, *, step: int, value: float) -> bool:
        """Record a validation value; True when the pruner stopped the trial."""
        response = self._post(
            f"/trials/{trial_id}/intermediate", {"step": step, "value": float(value)}
        )
        return PruneDecision.model_validate(response.json()).prune

    def complete(
        self,
        trial_id: int,
        *,
        values: Mapping[str, float],
        attrs: Mapping[str, Any] | None = None,
        artifact: str | None = None,
    ) -> TrialOutcome:
        """Hand in the final values; retried until accepted or rejected."""
        body: dict[str, Any] = {"values": dict(values), "attrs": dict(attrs or {})}
        if artifact is not None:
            body["artifact"] = artifact
        response = self._post(f"/trials/{trial_id}/complete", body)
        return TrialOutcome.model_validate(response.json())

    def fail(self, trial_id: int, *, reason: str, requeue: bool | None = None) -> TrialOutcome:
        body: dict[str, Any] = {"reason": reason[:2000] or "failed"}
        if requeue is not None:
            body["requeue"] = requeue
        response = self._post(f"/trials/{trial_id}/fail", body)
        return TrialOutcome.model_validate(response.json())

    # Transport -------------------------------------------------------------

    def _post(
        self,
        path: str,
        body: Mapping[str, Any],
        *,
        attempts: int | None = None,
        abort: threading.Event | None = None,
    ) -> httpx.Response:
        """POST until a definitive answer; ``attempts=None`` retries without limit."""
        abort = abort or self.abort
        # NaN and infinities go through as JSON's common extension, so that the
        # service can fail the trial with a reason instead of the worker guessing.
        content = json.dumps(body, allow_nan=True, separators=(",", ":"))
        attempt = 0
        while True:
            wait: float | None
            try:
                response = self._http.post(path, content=content)
            except httpx.TransportError as error:
                problem = f"{type(error).__name__}: {error}"
                wait = None
            else:
                if response.status_code < 400:
                    return response
                if response.status_code not in RETRYABLE_STATUS:
                    raise Rejected(response.status_code, _message(response))
                problem = f"{response.status_code}: {_message(response)}"
                wait = retry_after_seconds(response.headers.get("Retry-After"))
            attempt += 1
            if attempts is not None and attempt >= attempts:
                raise Unreachable(f"POST {path}: {problem}")
            delay = self.backoff.delay(attempt - 1)
            if wait is not None:
                # The service knows best when it will be back (within reason); a
                # little jitter keeps a fleet from coming back in the same instant.
                delay = min(max(wait, delay), max(self.backoff.max_s, RETRY_AFTER_MAX_S))
                delay *= random.uniform(1.0, 1.1)
            log.warning("POST %s failed (%s); retrying in %.1fs", path, problem, delay)
            if abort.wait(delay) or self.abort.is_set():
                raise Interrupted(f"POST {path}: stopped while retrying ({problem})")
