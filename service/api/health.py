"""Liveness and readiness."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.errors import DatabaseUnavailable
from service.migrate import current_revision, head_revision

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
def healthz() -> dict:
    """Answers as long as the process serves HTTP; no database access."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="The database is reachable and migrated",
    responses={503: {"description": "Database unreachable or not migrated"}},
)
def readyz(request: Request):
    """Ready when the database answers and TuneFleet's schema is at the expected revision."""
    engine = request.app.state.engine
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
            revision = current_revision(conn)
    except sa.exc.SQLAlchemyError as error:
        raise DatabaseUnavailable("the database cannot be reached") from error
    expected = head_revision()
    if revision != expected:
        return JSONResponse(
            status_code=503,
            content={
                "status": "not_migrated",
                "revision": revision,
                "expected": expected,
                "message": "run `tunefleet migrate` against this database",
            },
        )
    return {"status": "ok", "revision": revision}
