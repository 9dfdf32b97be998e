"""The one HTTP core under every TuneFleet client: the CLI's, the demo's and the worker's.

It owns the base URL with the API prefix, the bearer token, the error envelope
(``{"detail": {"code", "message", "path"}}``) and the retry policy: capped
exponential backoff with jitter, ``Retry-After`` honoured in seconds or as an
HTTP date. Only idempotent calls are retried blindly. A call that is not
idempotent is sent again only when it surely never reached the service (the
connection was refused) or the service said so (429); any other failure is
ambiguous and raised as :class:`AmbiguousFailure` for the caller to resolve
(a study create checks by name whether the first attempt went through).

Failover: the base URL may name several API processes behind one database,
comma-separated. A connection failure, a timeout or a 502/503/504 moves the
next attempt to the next URL at once; once each was tried, the usual backoff
applies before the round starts again. The one that answered is kept for the
calls after.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from types import EllipsisType
from typing import Any

import httpx

from tunefleet.protocol import API_PREFIX

__all__ = [
    "RETRYABLE_STATUS",
    "AmbiguousFailure",
    "ApiConnection",
    "ApiError",
    "Backoff",
    "Interrupted",
    "Unreachable",
    "error_of",
    "retry_after_seconds",
    "split_urls",
]

log = logging.getLogger("tunefleet.http")

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
# Answers that say "this process cannot serve you now": another one may.
FAILOVER_STATUS = frozenset({502, 503, 504})
# The longest Retry-After honoured as given; beyond it the backoff cap applies.
RETRY_AFTER_MAX_S = 60.0
# Failures after which a request surely never reached the service.
_NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class ApiError(Exception):
    """A definitive answer other than success: the service's code, message and field path."""

    def __init__(
        self, status_code: int, message: str, *, code: str | None = None, path: list | None = None
    ) -> None:
        self.status_code = status_code
        self.message = message
        self.code = code
        self.path = path
        where = f" (at {'.'.join(str(p) for p in path)})" if path else ""
        super().__init__(f"{message}{where}")


class Unreachable(Exception):
    """The service could not be reached (or kept failing) within the attempts allowed."""

    def __init__(self, base_url: str, problem: str) -> None:
        self.base_url = base_url
        self.problem = problem
        super().__init__(f"cannot reach the TuneFleet API at {base_url}: {problem}")


class AmbiguousFailure(Unreachable):
    """A call that is not idempotent failed in a way that leaves unknown whether it took effect."""


class Interrupted(Exception):
    """A wait between two attempts was cut short because the caller is stopping."""


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


def error_of(response: httpx.Response) -> ApiError:
    """The :class:`ApiError` of an answer, from the service's envelope or FastAPI's own."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        return ApiError(status, response.text.strip()[:500] or response.reason_phrase)
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, dict):
        path = detail.get("path")
        return ApiError(
            status,
            str(detail.get("message", detail))[:2000],
            code=detail.get("code"),
            path=list(path) if isinstance(path, list | tuple) and path else None,
        )
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        # FastAPI's validation errors: a list of {loc, msg}.
        first = detail[0]
        loc = [p for p in first.get("loc", []) if p != "body"]
        more = f" (and {len(detail) - 1} more)" if len(detail) > 1 else ""
        return ApiError(status, f"{first.get('msg', 'invalid')}{more}", path=loc or None)
    return ApiError(status, str(detail)[:500])


def split_urls(base_url: str) -> list[str]:
    """The API's base URLs from one string: comma-separated, trailing slashes dropped."""
    urls = [u.strip().rstrip("/") for u in base_url.split(",") if u.strip()]
    if not urls:
        raise ValueError("no service URL given")
    return urls


class ApiConnection:
    """Requests to a TuneFleet API, under ``/api/v1``, with one retry policy; the
    base URL names one API process or several, comma-separated (failover).

    ``attempts`` bounds the tries of a call (None: until success, for a worker
    that must not lose a result). ``abort`` ends a wait between attempts at once
    with :class:`Interrupted`.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout_s: float = 30.0,
        attempts: int | None = 4,
        backoff: Backoff | None = None,
        abort: threading.Event | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_urls = split_urls(base_url)
        self._current = 0
        self.attempts = attempts
        self.backoff = backoff or Backoff()
        self.abort = abort or threading.Event()
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._clients = [
            httpx.Client(
                base_url=url + API_PREFIX, headers=headers, timeout=timeout_s, transport=transport
            )
            for url in self.base_urls
        ]

    @property
    def base_url(self) -> str:
        """The API process the next call goes to."""
        return self.base_urls[self._current]

    def _fail_over(self) -> None:
        self._current = (self._current + 1) % len(self.base_urls)
        log.warning("failing over to the TuneFleet API at %s", self.base_url)

    def close(self) -> None:
        for client in self._clients:
            client.close()

    def __enter__(self) -> ApiConnection:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool,
        attempts: int | EllipsisType | None = ...,
        abort: threading.Event | None = None,
    ) -> httpx.Response:
        """Send until a definitive answer; a 4xx raises :class:`ApiError`.

        ``path`` is relative to the API prefix. ``attempts=...`` takes the
        connection's default.
        """
        limit = self.attempts if attempts is ... else attempts
        abort = abort or self.abort
        # NaN and infinities go through as JSON's common extension, so that the
        # service can answer with a reason instead of the client guessing.
        content = (
            None
            if json_body is None
            else json.dumps(dict(json_body), allow_nan=True, separators=(",", ":"))
        )
        what = f"{method} {API_PREFIX}{path}"
        attempt = 0
        tried = 0  # URLs tried since the last wait
        while True:
            wait: float | None = None
            fail_over = False
            try:
                response = self._clients[self._current].request(
                    method, path, content=content, params=params, headers=headers
                )
            except httpx.TransportError as error:
                problem = f"{type(error).__name__}: {error}".rstrip(": ")
                if not idempotent and not isinstance(error, _NEVER_SENT):
                    raise AmbiguousFailure(self.base_url, f"{what}: {problem}") from None
                fail_over = True
            else:
                if response.status_code < 400:
                    return response
                error = error_of(response)
                if response.status_code not in RETRYABLE_STATUS:
                    raise error
                if not idempotent and response.status_code != 429:
                    raise AmbiguousFailure(
                        self.base_url, f"{what}: {response.status_code}: {error.message}"
                    )
                problem = f"{response.status_code}: {error.message}"
                wait = retry_after_seconds(response.headers.get("Retry-After"))
                fail_over = response.status_code in FAILOVER_STATUS
            attempt += 1
            if limit is not None and attempt >= limit:
                raise Unreachable(self.base_url, f"{what}: {problem}")
            tried += 1
            if fail_over and len(self.base_urls) > 1:
                log.warning("%s failed at %s (%s)", what, self.base_url, problem)
                self._fail_over()
                if tried < len(self.base_urls):
                    continue  # another API process, at once
            tried = 0
            delay = self.backoff.delay(attempt - 1)
            if wait is not None:
                # The service knows best when it will be back (within reason); a
                # little jitter keeps a fleet from coming back in the same instant.
                delay = min(max(wait, delay), max(self.backoff.max_s, RETRY_AFTER_MAX_S))
                delay *= random.uniform(1.0, 1.1)
            log.warning("%s failed (%s); retrying in %.1fs", what, problem, delay)
            if abort.wait(delay) or self.abort.is_set():
                raise Interrupted(f"{what}: stopped while retrying ({problem})")
