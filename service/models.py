"""TuneFleet's own tables.

Every table is prefixed ``tf_``: Optuna owns ``studies``, ``trials`` and the rest
of the unprefixed names in the same database, and its own ``alembic_version``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.TypeDecorator):
    """A timestamp with time zone that always reads back aware, in UTC.

    PostgreSQL keeps the zone; SQLite (the demo's database) has no such type
    and returns naive values, which Python refuses to compare with aware ones.
    Values are stored in UTC on both, so SQLite's text compares in order too.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: give it a time zone")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime()}


class StudyState(StrEnum):
    """The state of a study: running, paused, stopped, completed or failed."""

    RUNNING = "running"  # leases hand out its trials
    PAUSED = "paused"  # no new trials; running ones are told to stop
    STOPPED = "stopped"  # for good: nothing runs or is re-queued
    COMPLETED = "completed"  # its budget is used up and nothing runs
    FAILED = "failed"  # more trials failed than budget.max_failed_trials; resume retries


class LeaseState(StrEnum):
    """The state of a lease: active until it ends one of five ways."""

    ACTIVE = "active"  # a worker holds the trial
    COMPLETED = "completed"  # the worker told its values
    PRUNED = "pruned"  # the pruner stopped it
    FAILED = "failed"  # the worker reported a failure
    RELEASED = "released"  # the worker let go of it (re-queued)
    EXPIRED = "expired"  # reaped: no heartbeat, past its time limit, or never recorded


class StateColumn(sa.TypeDecorator):
    """A StrEnum stored as its value in a short string column; reads back as the enum."""

    impl = sa.String(16)
    cache_ok = True

    def __init__(self, enum: type[StrEnum]) -> None:
        super().__init__()
        self.enum = enum

    def process_bind_param(self, value: str | None, dialect) -> str | None:
        return None if value is None else self.enum(value).value

    def process_result_value(self, value: str | None, dialect) -> StrEnum | None:
        return None if value is None else self.enum(value)


STUDY_STATES = tuple(s.value for s in StudyState)
TOKEN_SCOPES = ("admin", "user", "worker")


class StudyRecord(Base):
    """A study as TuneFleet knows it: its owner, spec and state; Optuna keeps the trials."""

    __tablename__ = "tf_studies"
    __table_args__ = (
        sa.UniqueConstraint("owner", "name", name="uq_tf_studies_owner_name"),
        sa.CheckConstraint(f"state IN {STUDY_STATES!r}", name="state"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str] = mapped_column(sa.String(64), index=True)
    name: Mapped[str] = mapped_column(sa.String(64))
    spec: Mapped[dict] = mapped_column(sa.JSON)
    state: Mapped[StudyState] = mapped_column(StateColumn(StudyState), default=StudyState.RUNNING)
    priority: Mapped[int] = mapped_column(default=0)
    optuna_study_name: Mapped[str] = mapped_column(sa.String(512), unique=True)
    optuna_study_id: Mapped[int | None] = mapped_column(default=None)
    # Trials that failed for good (not re-queued) since the study last (re)started.
    failed_trials: Mapped[int] = mapped_column(default=0, server_default="0")
    last_failure: Mapped[str | None] = mapped_column(sa.Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ApiToken(Base):
    """A bearer token, stored as its keyed hash only."""

    __tablename__ = "tf_api_tokens"
    __table_args__ = (sa.CheckConstraint(f"scope IN {TOKEN_SCOPES!r}", name="scope"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(sa.String(128), unique=True)
    scope: Mapped[str] = mapped_column(sa.String(16))
    owner: Mapped[str] = mapped_column(sa.String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    # A worker token bound to an owner leases only that owner's studies (a private fleet).
    studies_of: Mapped[str | None] = mapped_column(sa.String(64), default=None)


LEASE_STATES = tuple(s.value for s in LeaseState)


class Lease(Base):
    """A trial handed to a worker. Alive from the moment it is handed out until its
    heartbeats stop for the grace period; one row per Optuna trial, so two workers
    can never hold the same trial."""

    __tablename__ = "tf_leases"
    __table_args__ = (
        sa.CheckConstraint(f"state IN {LEASE_STATES!r}", name="state"),
        sa.Index("ix_tf_leases_state_expires_at", "state", "expires_at"),
        sa.Index("ix_tf_leases_worker_id_state", "worker_id", "state"),
    )

    # Optuna's trial id: what the worker protocol's trial calls take.
    trial_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    study_id: Mapped[int] = mapped_column(
        sa.ForeignKey("tf_studies.id", ondelete="CASCADE"), index=True
    )
    number: Mapped[int] = mapped_column()
    worker_id: Mapped[str] = mapped_column(sa.String(200))
    device: Mapped[str] = mapped_column(sa.String(64))
    state: Mapped[LeaseState] = mapped_column(StateColumn(LeaseState), default=LeaseState.ACTIVE)
    leased_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    progress: Mapped[dict | None] = mapped_column(sa.JSON, default=None)
    # What the lease ended with (values, reason, retry), so that a repeated call
    # is answered the same way and a different one is a conflict.
    outcome: Mapped[dict | None] = mapped_column(sa.JSON, default=None)
    # The holder: the token that took the lease and the hash of the lease secret
    # handed to it; every call on the trial must bring that secret.
    token_id: Mapped[int | None] = mapped_column(default=None)
    secret_hash: Mapped[str | None] = mapped_column(sa.String(128), default=None)
