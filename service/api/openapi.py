"""The OpenAPI document, made to say what the routes really answer.

FastAPI documents its own 422 body (`HTTPValidationError`, `detail` as a list)
and knows nothing of the answers our middleware and handlers give; both are
corrected here, once, so that a generated client or a contract test can trust
every status code and body the document lists.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.schemas import error_responses

__all__ = ["install_openapi"]

_FASTAPI_VALIDATION = ("HTTPValidationError", "ValidationError")
_METHODS = ("get", "post", "put", "patch", "delete")


def _error_entry(schema: dict[str, Any], code: int) -> dict[str, Any]:
    entry = dict(error_responses(code)[code])
    model = entry.pop("model")
    entry["content"] = {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
    }
    return entry


def _fix_operation(schema: dict[str, Any], operation: dict[str, Any]) -> None:
    responses = operation.setdefault("responses", {})
    # Every 422 is our envelope, never FastAPI's default body; every route has one, for
    # a query parameter it does not take (service/api/requests.py).
    responses["422"] = _error_entry(schema, 422)
    if "requestBody" in operation:
        # Unparsable JSON (400) and a body over the limit (413) reach every route with a body.
        responses.setdefault("400", _error_entry(schema, 400))
        responses.setdefault("413", _error_entry(schema, 413))
    if operation.get("security"):
        # Authentication and the database come before any handler that needs a token.
        for code in (401, 503):
            responses.setdefault(str(code), _error_entry(schema, code))


def build_openapi(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
    )
    for item in schema.get("paths", {}).values():
        for method in _METHODS:
            if method in item:
                _fix_operation(schema, item[method])
    components = schema.get("components", {}).get("schemas", {})
    for name in _FASTAPI_VALIDATION:
        components.pop(name, None)
    return schema


def install_openapi(app: FastAPI) -> None:
    """Serve the corrected document at /openapi.json (built once per process)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
