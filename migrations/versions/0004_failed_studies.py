"""Studies that fail: a `failed` state, the count of failed trials and the last reason.

Revision ID: 0004_failed_studies
Revises: 0003_token_expiry
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_failed_studies"
down_revision = "0003_token_expiry"
branch_labels = None
depends_on = None

_OLD_STATES = "state IN ('running', 'paused', 'stopped', 'completed')"
_NEW_STATES = "state IN ('running', 'paused', 'stopped', 'completed', 'failed')"


# 0001 named the check "ck_tf_studies_state" under a naming convention that prefixed it
# again; op.f() takes a name as it is in the database, without the convention.
_FIRST_NAME = "ck_tf_studies_ck_tf_studies_state"
_NAME = "ck_tf_studies_state"


def upgrade() -> None:
    # Batch mode: SQLite (the demo's database) rebuilds the table to change a constraint.
    with op.batch_alter_table("tf_studies") as batch:
        batch.drop_constraint(op.f(_FIRST_NAME), type_="check")
        batch.create_check_constraint(op.f(_NAME), _NEW_STATES)
        batch.add_column(
            sa.Column("failed_trials", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("last_failure", sa.Text(), nullable=True))


def downgrade() -> None:
    op.execute("UPDATE tf_studies SET state = 'stopped' WHERE state = 'failed'")
    with op.batch_alter_table("tf_studies") as batch:
        batch.drop_column("last_failure")
        batch.drop_column("failed_trials")
        batch.drop_constraint(op.f(_NAME), type_="check")
        batch.create_check_constraint(op.f(_FIRST_NAME), _OLD_STATES)
