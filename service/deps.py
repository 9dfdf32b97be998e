"""Typed dependencies: a handler's signature says what it needs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from optuna.storages import BaseStorage
from sqlalchemy.orm import Session

from service.auth import Principal, authenticate
from service.config import Settings
from service.db import session_scope
from service.errors import Forbidden

__all__ = [
    "CurrentPrincipal",
    "CurrentUser",
    "CurrentWorker",
    "SessionDep",
    "SettingsDep",
    "StorageDep",
]


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_storage(request: Request) -> BaseStorage:
    return request.app.state.storage


def get_session(request: Request) -> Iterator[Session]:
    """One transaction per request, committed before the answer is sent."""
    with session_scope(request.app.state.engine) as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
StorageDep = Annotated[BaseStorage, Depends(get_storage)]
# scope="function": commit (or fail) before the response goes out, never after.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]

# Declares the bearer scheme in OpenAPI (the "Authorize" button of /docs);
# the header itself is checked by service.auth.authenticate.
_bearer = HTTPBearer(
    auto_error=False,
    description="A token from `tunefleet token create`: scope admin, user or worker.",
)


def get_principal(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    return authenticate(
        session,
        secret=settings.token_secret,
        authorization=request.headers.get("authorization"),
        client=request.client.host if request.client else None,
    )


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def get_user(principal: CurrentPrincipal) -> Principal:
    if principal.scope not in ("user", "admin"):
        raise Forbidden("a worker token cannot use the study API: use a user or admin token")
    return principal


def get_worker(principal: CurrentPrincipal) -> Principal:
    if principal.scope not in ("worker", "admin"):
        raise Forbidden("this call is for workers: use a worker token")
    return principal


CurrentUser = Annotated[Principal, Depends(get_user)]
CurrentWorker = Annotated[Principal, Depends(get_worker)]
