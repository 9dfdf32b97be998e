"""Bearer tokens: made here, stored only as a keyed hash, checked on every request."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service.errors import Conflict, InvalidSpec, Unauthorized
from service.models import TOKEN_SCOPES, ApiToken

__all__ = ["TOKEN_PREFIX", "Principal", "authenticate", "create_token", "hash_token"]

TOKEN_PREFIX = "tf_"
OWNER_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_CHOSEN_TOKEN_LENGTH = 16
MAX_TOKEN_LENGTH = 256
# Writing last_used_at on every request would turn each read into a write.
LAST_USED_RESOLUTION = timedelta(minutes=1)

Scope = Literal["admin", "user", "worker"]


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: the token's owner and scope."""

    owner: str
    scope: Scope
    token_id: int

    @property
    def is_admin(self) -> bool:
        return self.scope == "admin"


def hash_token(secret: str, token: str) -> str:
    """HMAC-SHA256 of the token keyed with the server's secret, hex encoded."""
    return hmac.new(secret.encode(), token.encode(), hashlib.sha256).hexdigest()


def create_token(
    session: Session, *, scope: str, owner: str, secret: str, value: str | None = None
) -> str:
    """Store a new token and return it; only its hash is kept.

    With `value`, that token is registered instead of a generated one; doing so
    again for the same scope and owner is harmless (a deployment can run it at
    every start), for another scope or owner it is a conflict.
    """
    if scope not in TOKEN_SCOPES:
        raise InvalidSpec(f"scope must be one of {', '.join(TOKEN_SCOPES)}, not {scope!r}")
    if not OWNER_PATTERN.match(owner):
        raise InvalidSpec(
            "owner must be 1 to 64 letters, digits or . _ @ - (starting with a letter or digit), "
            f"not {owner!r}"
        )
    if value is None:
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    else:
        if not MIN_CHOSEN_TOKEN_LENGTH <= len(value) <= MAX_TOKEN_LENGTH or not value.isprintable():
            raise InvalidSpec(
                f"a chosen token must be {MIN_CHOSEN_TOKEN_LENGTH} to {MAX_TOKEN_LENGTH} "
                "printable characters"
            )
        token = value
    token_hash = hash_token(secret, token)
    existing = session.scalars(sa.select(ApiToken).where(ApiToken.token_hash == token_hash)).first()
    if existing is not None:
        if existing.scope == scope and existing.owner == owner and existing.revoked_at is None:
            return token
        raise Conflict("this token value is already registered for another scope or owner")
    session.add(ApiToken(token_hash=token_hash, scope=scope, owner=owner))
    session.flush()
    return token


def authenticate(session: Session, *, secret: str, authorization: str | None) -> Principal:
    """The principal behind an `Authorization: Bearer <token>` header; Unauthorized if none."""
    if not authorization:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    kind, _, token = authorization.partition(" ")
    token = token.strip()
    if kind.lower() != "bearer" or not token:
        raise Unauthorized("the Authorization header must be 'Bearer <token>'")
    if len(token) > MAX_TOKEN_LENGTH:
        raise Unauthorized("invalid or revoked token")
    row = session.scalars(
        sa.select(ApiToken).where(ApiToken.token_hash == hash_token(secret, token))
    ).first()
    if row is None or row.revoked_at is not None:
        raise Unauthorized("invalid or revoked token")
    _touch(session, row)
    return Principal(owner=row.owner, scope=row.scope, token_id=row.id)  # type: ignore[arg-type]


def _touch(session: Session, row: ApiToken) -> None:
    """Record that the token was used, at most once a minute, in a transaction of its
    own: many workers share one token, and the request's transaction may be long."""
    now = datetime.now(UTC)
    last = row.last_used_at
    if last is not None and last.tzinfo is None:
        last = last.replace(tzinfo=UTC)
    if last is not None and now - last <= LAST_USED_RESOLUTION:
        return
    stale = sa.or_(
        ApiToken.last_used_at.is_(None), ApiToken.last_used_at < now - LAST_USED_RESOLUTION
    )
    with session.get_bind().begin() as conn:
        conn.execute(
            sa.update(ApiToken).where(ApiToken.id == row.id, stale).values(last_used_at=now)
        )
