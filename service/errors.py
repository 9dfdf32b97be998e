"""Every error a user or a worker can cause, each with one HTTP answer."""

from __future__ import annotations

from collections.abc import Sequence


class TuneFleetError(Exception):
    """Base of the errors the API turns into a JSON answer with a status code."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, path: Sequence[str | int] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = list(path) if path is not None else None

    def to_dict(self) -> dict:
        body: dict = {"code": self.code, "message": self.message}
        if self.path is not None:
            body["path"] = self.path
        return body


class Unauthorized(TuneFleetError):
    status_code = 401
    code = "unauthorized"


class Forbidden(TuneFleetError):
    status_code = 403
    code = "forbidden"


class NotFound(TuneFleetError):
    status_code = 404
    code = "not_found"


class Conflict(TuneFleetError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(TuneFleetError):
    status_code = 413
    code = "payload_too_large"


class InvalidSpec(TuneFleetError):
    status_code = 422
    code = "invalid"


class TooManyRequests(TuneFleetError):
    """An owner's limit is reached; the message names the limit and its setting."""

    status_code = 429
    code = "limit_reached"


class DatabaseUnavailable(TuneFleetError):
    """The database cannot be reached; the client should retry after a short wait."""

    status_code = 503
    code = "database_unavailable"
    retry_after_s = 5
