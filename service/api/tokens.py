"""Tokens: an admin makes them; their owners (and admins) list and revoke them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from service import auth
from service.deps import CurrentPrincipal, CurrentUser, SessionDep, SettingsDep
from service.errors import Forbidden
from service.schemas import TokenCreate, TokenCreated, TokenPublic, TokensPublic, error_responses

router = APIRouter(
    prefix="/api/v1/tokens",
    tags=["tokens"],
    responses=error_responses(401, 403, 422, 503),
)

TokenId = Annotated[int, Path(ge=1, le=2**31 - 1, description="The token's id.")]


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create a token")
def create_token(
    body: TokenCreate, user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> TokenCreated:
    """Admins only: a new token for an owner; its value is in this answer only."""
    if not user.is_admin:
        raise Forbidden("only an admin token can create tokens")
    expires_in = (
        auth.parse_duration(body.expires_in, path=["expires_in"]) if body.expires_in else None
    )
    issued = auth.issue_token(
        session,
        scope=body.scope,
        owner=body.owner,
        secret=settings.token_secret,
        expires_in=expires_in,
        studies_of=body.studies_of,
    )
    public = TokenPublic.model_validate(issued.row)
    return TokenCreated(**public.model_dump(), token=issued.value)


@router.get("", summary="List tokens")
def list_tokens(user: CurrentUser, session: SessionDep) -> TokensPublic:
    """Your tokens (an admin sees everyone's); never their values."""
    rows = auth.list_tokens(session, principal=user)
    return TokensPublic(data=[TokenPublic.model_validate(row) for row in rows], count=len(rows))


@router.post("/{token_id}/revoke", responses=error_responses(404), summary="Revoke a token")
def revoke_token(
    token_id: TokenId, principal: CurrentPrincipal, session: SessionDep
) -> TokenPublic:
    """Revoke one of your tokens (an admin: anyone's); it stops working at once."""
    return TokenPublic.model_validate(auth.revoke_token(session, token_id, principal=principal))
