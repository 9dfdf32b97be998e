"""What every request goes through before a handler: a body size limit, and
validation errors answered in the same shape as every other error."""

from __future__ import annotations

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.handlers import error_response
from service.errors import InvalidSpec, PayloadTooLarge
from tunefleet.spec import clean_loc

__all__ = ["BodySizeLimit", "install_request_checks"]

MAX_ERRORS_SHOWN = 20


def validation_error_body(errors: list[dict]) -> dict:
    """422 body: the first problem's path, every problem with its own path and message."""
    problems = []
    for error in errors[:MAX_ERRORS_SHOWN]:
        loc = tuple(error.get("loc", ()))
        path = clean_loc(loc) if loc[:1] == ("body",) else [*loc[:1], *clean_loc(loc[1:])]
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        problems.append({"path": path, "loc": ".".join(str(p) for p in path), "message": message})
    summary = "; ".join(f"{p['loc'] or 'body'}: {p['message']}" for p in problems)
    return {
        "detail": {
            "code": "invalid",
            "message": summary or "invalid request",
            "path": problems[0]["path"] if problems else None,
            "errors": problems,
        }
    }


def invalid_json_body(problem: dict, body: object) -> dict:
    """400 body for a request body that is not JSON: where it breaks, as line and column."""
    position = next((p for p in problem.get("loc", ()) if isinstance(p, int)), None)
    reason = str((problem.get("ctx") or {}).get("error", "")).strip()
    where = ""
    if position is not None:
        text = body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
        before = text[:position]
        line = before.count("\n") + 1
        column = position - (before.rfind("\n") + 1) + 1
        where = f" at line {line} column {column}"
    return {
        "detail": {
            "code": "invalid_json",
            "message": f"the body is not valid JSON{where}" + (f": {reason}" if reason else ""),
        }
    }


async def _request_validation_error(_request: Request, error: RequestValidationError):
    errors = list(error.errors())
    if errors and errors[0].get("type") == "json_invalid":
        return JSONResponse(status_code=400, content=invalid_json_body(errors[0], error.body))
    return JSONResponse(status_code=422, content=validation_error_body(errors))


async def _http_error(_request: Request, error: HTTPException):
    """Routing answers (unknown path 404, wrong method 405, unreadable body 400) in our shape."""
    codes = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}
    return JSONResponse(
        status_code=error.status_code,
        content={
            "detail": {
                "code": codes.get(error.status_code, "http_error"),
                "message": str(error.detail),
            }
        },
        headers=getattr(error, "headers", None),
    )


class BodySizeLimit:
    """Answer 413 to a request body larger than `max_bytes`, before any handler reads it.

    The body is read here (it is small by construction) and replayed to the app.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            PayloadTooLarge(f"the request body is larger than {self.max_bytes} bytes")
        )
        await response(scope, receive, send)


def _query_names(route: object) -> frozenset[str]:
    names = _QUERY_NAMES.get(id(route))
    if names is None:
        found: set[str] = set()
        pending = [getattr(route, "dependant", None)]
        while pending:  # the route's own parameters and those of its dependencies
            dependant = pending.pop()
            if dependant is not None:
                found.update(p.alias for p in dependant.query_params)
                pending.extend(dependant.dependencies)
        names = _QUERY_NAMES[id(route)] = frozenset(found)
    return names


_QUERY_NAMES: dict[int, frozenset[str]] = {}


def reject_unknown_query(request: Request) -> None:
    """A query parameter the route does not take is a 422, not silently ignored (a typo
    such as `?stat=running` would otherwise list every study)."""
    known = _query_names(request.scope.get("route"))
    for name in request.query_params:
        if name not in known:
            takes = f"this route takes {', '.join(sorted(known))}" if known else "it takes none"
            raise InvalidSpec(f"unknown query parameter {name!r}: {takes}", path=["query", name])


def install_request_checks(app: FastAPI, *, max_body_bytes: int) -> None:
    """Before the routers are included: every route they bring gets these checks."""
    app.router.dependencies.append(Depends(reject_unknown_query))
    app.add_exception_handler(RequestValidationError, _request_validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
