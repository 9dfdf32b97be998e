"""One place that turns errors into HTTP answers: no 500 for anything a client can cause."""

from __future__ import annotations

import logging

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from optuna.exceptions import StorageInternalError

from service.db import is_connection_error
from service.errors import DatabaseUnavailable, TuneFleetError

log = logging.getLogger(__name__)


def error_response(error: TuneFleetError) -> JSONResponse:
    headers = {}
    if isinstance(error, DatabaseUnavailable):
        headers["Retry-After"] = str(error.retry_after_s)
    if error.status_code == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(
        status_code=error.status_code, content={"detail": error.to_dict()}, headers=headers
    )


def _unavailable() -> JSONResponse:
    return error_response(DatabaseUnavailable("the database cannot be reached right now; retry"))


async def _tunefleet_error(_request: Request, error: TuneFleetError) -> JSONResponse:
    return error_response(error)


async def _database_error(_request: Request, error: Exception) -> JSONResponse:
    if is_connection_error(error):
        log.warning("database unreachable: %s", error)
        return _unavailable()
    log.exception("database error")
    return JSONResponse(
        status_code=500, content={"detail": {"code": "internal", "message": "internal error"}}
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(TuneFleetError, _tunefleet_error)
    # Optuna wraps driver errors in StorageInternalError; ours arrive as SQLAlchemyError.
    app.add_exception_handler(StorageInternalError, _database_error)
    app.add_exception_handler(sa.exc.SQLAlchemyError, _database_error)
