"""Tokens that expire: an optional expiry per token.

Revision ID: 0003_token_expiry
Revises: 0002_leases
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_token_expiry"
down_revision = "0002_leases"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: every existing token keeps working, without expiry.
    op.add_column(
        "tf_api_tokens", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("tf_api_tokens", "expires_at")
