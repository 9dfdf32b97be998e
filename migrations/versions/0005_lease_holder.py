"""Leases bound to their holder; worker tokens bound to an owner's studies.

A lease keeps the keyed hash of the secret handed out with it and the token
that took it; a worker token may be bound to one owner (a private fleet).

Revision ID: 0005_lease_holder
Revises: 0004_failed_studies
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_lease_holder"
down_revision = "0004_failed_studies"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: a lease handed out before the upgrade has no secret (see README,
    # "Leases and fleets"); a token made before it leases every study, as it did.
    op.add_column("tf_leases", sa.Column("secret_hash", sa.String(128), nullable=True))
    op.add_column("tf_leases", sa.Column("token_id", sa.Integer(), nullable=True))
    op.add_column("tf_api_tokens", sa.Column("studies_of", sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_column("tf_api_tokens", "studies_of")
    op.drop_column("tf_leases", "token_id")
    op.drop_column("tf_leases", "secret_hash")
