"""Bearer tokens: made here, stored only as a keyed hash, checked on every request."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service.errors import Conflict, Forbidden, InvalidSpec, NotFound, Unauthorized
from service.models import TOKEN_SCOPES, ApiToken

__all__ = [
    "TOKEN_PREFIX",
    "Principal",
    "authenticate",
    "create_token",
    "hash_token",
    "issue_token",
    "list_tokens",
    "parse_duration",
    "revoke_token",
]

TOKEN_PREFIX = "tf_"
OWNER_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_CHOSEN_TOKEN_LENGTH = 16
MAX_TOKEN_LENGTH = 256
# Writing last_used_at on every request would turn each read into a write.
LAST_USED_RESOLUTION = timedelta(minutes=1)

MAX_EXPIRY = timedelta(days=3650)
_DURATION = re.compile(r"^\s*(\d{1,6})\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

Scope = Literal["admin", "user", "worker"]

log = logging.getLogger("tunefleet.auth")


class _LogLimit:
    """At most ``burst`` lines per ``window_s``; the next line says how many were held back."""

    def __init__(self, burst: int = 20, window_s: float = 60.0) -> None:
        self.burst, self.window_s = burst, window_s
        self.lock = threading.Lock()
        self.start, self.lines, self.held = time.monotonic(), 0, 0

    def take(self) -> int | None:
        """None: drop this line; else the count held back since the last line written."""
        with self.lock:
            now = time.monotonic()
            if now - self.start >= self.window_s:
                self.start, self.lines = now, 0
            if self.lines >= self.burst:
                self.held += 1
                return None
            self.lines += 1
            held, self.held = self.held, 0
            return held


_FAILED_AUTH_LOG = _LogLimit()


def _log_failed(client: str | None, reason: str) -> None:
    """One line per failed authentication (rate limited); never the token itself."""
    held = _FAILED_AUTH_LOG.take()
    if held is not None:
        more = f" ({held} more not logged)" if held else ""
        log.warning("failed authentication from %s: %s%s", client or "unknown", reason, more)


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: the token's owner and scope."""

    owner: str
    scope: Scope
    token_id: int
    # A worker token bound to an owner leases only that owner's studies.
    studies_of: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.scope == "admin"


def hash_token(secret: str, token: str) -> str:
    """HMAC-SHA256 of the token keyed with the server's secret, hex encoded."""
    return hmac.new(secret.encode(), token.encode(), hashlib.sha256).hexdigest()


def parse_duration(text: str, *, path: list[str | int] | None = None) -> timedelta:
    """`30d`, `12h`, `90m`, `3600s` or `2w` as a timedelta; InvalidSpec with the fix if not."""
    match = _DURATION.match(text)
    if match is None:
        raise InvalidSpec(
            f"expiry must be a number and a unit (s, m, h, d or w), e.g. 30d or 12h, not {text!r}",
            path=path,
        )
    delta = timedelta(seconds=int(match[1]) * _UNIT_S[match[2]])
    check_expiry(delta, path=path)
    return delta


def check_expiry(delta: timedelta, *, path: list[str | int] | None = None) -> None:
    if not timedelta(minutes=1) <= delta <= MAX_EXPIRY:
        raise InvalidSpec(
            "a token must expire in at least 1 minute and at most 3650 days", path=path
        )


@dataclass(frozen=True)
class IssuedToken:
    """A token just made: the value (known only now) and its stored row."""

    value: str
    row: ApiToken


def create_token(
    session: Session,
    *,
    scope: str,
    owner: str,
    secret: str,
    value: str | None = None,
    expires_in: timedelta | None = None,
    studies_of: str | None = None,
) -> str:
    """Store a new token and return it; only its hash is kept (see `issue_token`)."""
    return issue_token(
        session,
        scope=scope,
        owner=owner,
        secret=secret,
        value=value,
        expires_in=expires_in,
        studies_of=studies_of,
    ).value


def issue_token(
    session: Session,
    *,
    scope: str,
    owner: str,
    secret: str,
    value: str | None = None,
    expires_in: timedelta | None = None,
    studies_of: str | None = None,
) -> IssuedToken:
    """Store a new token; only its hash is kept.

    With `value`, that token is registered instead of a generated one; doing so
    again for the same scope and owner is harmless (a deployment can run it at
    every start), for another scope or owner it is a conflict. With `expires_in`,
    the token stops working that long from now. With `studies_of` (worker tokens
    only), the token leases only that owner's studies: a private fleet.
    """
    if scope not in TOKEN_SCOPES:
        raise InvalidSpec(
            f"scope must be one of {', '.join(TOKEN_SCOPES)}, not {scope!r}", path=["scope"]
        )
    if not OWNER_PATTERN.match(owner):
        raise InvalidSpec(
            "owner must be 1 to 64 letters, digits or . _ @ - (starting with a letter or digit), "
            f"not {owner!r}",
            path=["owner"],
        )
    if studies_of is not None:
        if scope != "worker":
            raise InvalidSpec(
                "studies_of binds a worker token to an owner's studies: use it with scope worker",
                path=["studies_of"],
            )
        if not OWNER_PATTERN.match(studies_of):
            raise InvalidSpec(
                f"studies_of must be an owner name, not {studies_of!r}", path=["studies_of"]
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
    expires_at = None
    if expires_in is not None:
        check_expiry(expires_in)
        expires_at = datetime.now(UTC) + expires_in
    token_hash = hash_token(secret, token)
    existing = session.scalars(sa.select(ApiToken).where(ApiToken.token_hash == token_hash)).first()
    if existing is not None:
        if (
            existing.scope == scope
            and existing.owner == owner
            and existing.studies_of == studies_of
            and existing.revoked_at is None
        ):
            return IssuedToken(token, existing)
        raise Conflict("this token value is already registered for another scope or owner")
    row = ApiToken(
        token_hash=token_hash,
        scope=scope,
        owner=owner,
        expires_at=expires_at,
        studies_of=studies_of,
    )
    session.add(row)
    session.flush()
    return IssuedToken(token, row)


def list_tokens(session: Session, *, principal: Principal | None = None) -> list[ApiToken]:
    """Every token (for an admin, or the local command line), or the principal's own."""
    query = sa.select(ApiToken).order_by(ApiToken.id)
    if principal is not None and not principal.is_admin:
        query = query.where(ApiToken.owner == principal.owner)
    return list(session.scalars(query))


def revoke_token(
    session: Session, token_id: int, *, principal: Principal | None = None
) -> ApiToken:
    """Revoke a token at once; revoking it again changes nothing.

    An admin (or the local command line) may revoke any token, a user only their own;
    a worker token revokes nothing. Another owner's token is not found, as if absent.
    """
    if principal is not None and principal.scope == "worker":
        raise Forbidden("a worker token cannot revoke tokens: use a user or admin token")
    row = session.get(ApiToken, token_id, with_for_update=True)
    if row is None or (
        principal is not None and not principal.is_admin and row.owner != principal.owner
    ):
        raise NotFound(f"no token with id {token_id}")
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
        session.flush()
    return row


def authenticate(
    session: Session, *, secret: str, authorization: str | None, client: str | None = None
) -> Principal:
    """The principal behind an `Authorization: Bearer <token>` header; Unauthorized if none.

    A refusal is logged with the client's address and the reason, never the token.
    """
    try:
        return _authenticate(session, secret=secret, authorization=authorization)
    except Unauthorized as error:
        _log_failed(client, error.message)
        raise


def _authenticate(session: Session, *, secret: str, authorization: str | None) -> Principal:
    if not authorization:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    kind, _, token = authorization.partition(" ")
    token = token.strip()
    if kind.lower() != "bearer" or not token:
        raise Unauthorized("the Authorization header must be 'Bearer <token>'")
    if len(token) > MAX_TOKEN_LENGTH:
        raise Unauthorized("invalid token")
    token_hash = hash_token(secret, token)
    row = session.scalars(sa.select(ApiToken).where(ApiToken.token_hash == token_hash)).first()
    # The lookup is by a keyed hash, which a caller cannot steer byte by byte; the
    # comparison of the row found is constant-time all the same.
    if row is None or not hmac.compare_digest(row.token_hash, token_hash):
        raise Unauthorized("invalid token")
    if row.revoked_at is not None:
        raise Unauthorized(f"token revoked at {_stamp(row.revoked_at)}: ask for a new one")
    now = datetime.now(UTC)
    if row.expires_at is not None and _aware(row.expires_at) <= now:
        raise Unauthorized(f"token expired at {_stamp(row.expires_at)}: ask for a new one")
    _touch(session, row)
    return Principal(
        owner=row.owner,
        scope=row.scope,  # type: ignore[arg-type]
        token_id=row.id,
        studies_of=row.studies_of,
    )


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _stamp(moment: datetime) -> str:
    return _aware(moment).strftime("%Y-%m-%d %H:%M:%S UTC")


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
