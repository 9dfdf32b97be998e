"""Leases: which worker holds which trial, until when.

Revision ID: 0002_leases
Revises: 0001_initial
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_leases"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tf_leases",
        sa.Column("trial_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(200), nullable=False),
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("leased_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("progress", sa.JSON(), nullable=True),
        sa.Column("outcome", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("trial_id", name="pk_tf_leases"),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["tf_studies.id"],
            name="fk_tf_leases_study_id_tf_studies",
            ondelete="CASCADE",
        ),
        sa.CheckConstraint(
            "state IN ('active', 'completed', 'pruned', 'failed', 'released', 'expired')",
            name="ck_tf_leases_state",
        ),
    )
    op.create_index("ix_tf_leases_study_id", "tf_leases", ["study_id"])
    op.create_index("ix_tf_leases_state_expires_at", "tf_leases", ["state", "expires_at"])
    op.create_index("ix_tf_leases_worker_id_state", "tf_leases", ["worker_id", "state"])


def downgrade() -> None:
    op.drop_index("ix_tf_leases_worker_id_state", table_name="tf_leases")
    op.drop_index("ix_tf_leases_state_expires_at", table_name="tf_leases")
    op.drop_index("ix_tf_leases_study_id", table_name="tf_leases")
    op.drop_table("tf_leases")
