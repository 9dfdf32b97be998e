"""Studies and API tokens.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tf_studies",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("optuna_study_name", sa.String(512), nullable=False),
        sa.Column("optuna_study_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tf_studies"),
        sa.UniqueConstraint("owner", "name", name="uq_tf_studies_owner_name"),
        sa.UniqueConstraint("optuna_study_name", name="uq_tf_studies_optuna_study_name"),
        sa.CheckConstraint(
            "state IN ('running', 'paused', 'stopped', 'completed')", name="ck_tf_studies_state"
        ),
    )
    op.create_index("ix_tf_studies_owner", "tf_studies", ["owner"])
    op.create_table(
        "tf_api_tokens",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("token_hash", sa.String(128), nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_tf_api_tokens"),
        sa.UniqueConstraint("token_hash", name="uq_tf_api_tokens_token_hash"),
        sa.CheckConstraint("scope IN ('admin', 'user', 'worker')", name="ck_tf_api_tokens_scope"),
    )
    op.create_index("ix_tf_api_tokens_owner", "tf_api_tokens", ["owner"])


def downgrade() -> None:
    op.drop_index("ix_tf_api_tokens_owner", table_name="tf_api_tokens")
    op.drop_table("tf_api_tokens")
    op.drop_index("ix_tf_studies_owner", table_name="tf_studies")
    op.drop_table("tf_studies")
