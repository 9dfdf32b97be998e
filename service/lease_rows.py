"""A lease's row and the assignment that answers it: the part of a hand-out that a
single lease (service/leasing.py) and a batch (service/batch_leasing.py) share."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import timedelta

import sqlalchemy as sa
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial
from sqlalchemy.orm import Session

from service._optuna_internals import trial_id_of
from service.auth import Principal
from service.config import Settings
from service.lease_holder import new_lease_secret
from service.models import Lease, LeaseState, StudyRecord, utcnow
from service.trial_lifecycle import get_frozen_trial
from tunefleet.protocol import Assignment

__all__ = ["LeasedMeanwhile", "assignment_of", "held_leases", "open_leases", "renew_leases"]


class LeasedMeanwhile(Exception):
    """Another request of the same worker (and token) committed a lease while this one
    was handing out: a retry sent before the first answer came back. The caller rolls
    this hand-out back and answers with the lease that request made."""


def assignment_of(
    lease: Lease, record: StudyRecord, params: dict, settings: Settings, secret: str
) -> Assignment:
    """What the worker is told of its lease: the trial, its study's spec, its secret."""
    return Assignment(
        trial_id=lease.trial_id,
        study_id=lease.study_id,
        number=lease.number,
        params=params,
        spec=record.spec,
        owner=record.owner,
        lease_expires_at=lease.expires_at,
        heartbeat_interval_s=settings.heartbeat_interval_s,
        lease_secret=secret,
    )


def held_leases(
    session: Session, *, worker_id: str, holder: Principal | None, limit: int
) -> list[Lease]:
    """The active leases of this worker_id under this token (None: an in-process caller),
    newest first, locked; a lease held under the same worker_id by another token is
    not this worker's."""
    token_id = holder.token_id if holder is not None else None
    return list(
        session.scalars(
            sa.select(Lease)
            .where(
                Lease.worker_id == worker_id,
                Lease.state == LeaseState.ACTIVE,
                Lease.token_id.is_(None) if token_id is None else Lease.token_id == token_id,
            )
            .order_by(Lease.leased_at.desc(), Lease.trial_id)
            .limit(limit)
            .with_for_update()
        )
    )


def renew_leases(
    session: Session,
    leases: Sequence[Lease],
    *,
    storage: BaseStorage,
    settings: Settings,
    holder: Principal | None,
) -> list[Assignment]:
    """The answer to an earlier lease call was lost: the same leases again, extended,
    with new secrets (the first ones were lost with the answer). Uncommitted."""
    now = utcnow()
    answers = []
    for lease in leases:
        lease.heartbeat_at = now
        lease.expires_at = now + timedelta(seconds=settings.grace_period_s)
        record = session.get_one(StudyRecord, lease.study_id)
        params = get_frozen_trial(storage, lease.trial_id).params
        secret = new_lease_secret(lease, holder)
        answers.append(assignment_of(lease, record, params, settings, secret))
    return answers


def open_leases(
    session: Session,
    record: StudyRecord,
    trials: Sequence[FrozenTrial],
    *,
    worker_id: str,
    device: str,
    settings: Settings,
    holder: Principal | None,
) -> list[Assignment]:
    """A lease row for each trial just started, in the same transaction. Uncommitted.

    Raises LeasedMeanwhile when the worker got a lease from a concurrent request: the
    worker's hand-outs commit one at a time (a transaction-level advisory lock on its
    worker_id and token, PostgreSQL), and each looks for the others' leases under it,
    so a retried lease never leaves a second trial behind."""
    if _leased_meanwhile(session, worker_id=worker_id, holder=holder):
        raise LeasedMeanwhile(worker_id)
    now = utcnow()
    answers = []
    for trial in trials:
        lease = Lease(
            trial_id=trial_id_of(trial),
            study_id=record.id,
            number=trial.number,
            worker_id=worker_id,
            device=device,
            state=LeaseState.ACTIVE,
            leased_at=now,
            heartbeat_at=now,
            expires_at=now + timedelta(seconds=settings.grace_period_s),
        )
        secret = new_lease_secret(lease, holder)
        session.add(lease)
        answers.append(assignment_of(lease, record, trial.params, settings, secret))
    return answers


def _leased_meanwhile(session: Session, *, worker_id: str, holder: Principal | None) -> bool:
    if session.get_bind().dialect.name == "postgresql":
        token_id = holder.token_id if holder is not None else None
        digest = hashlib.blake2b(f"{token_id}/{worker_id}".encode(), digest_size=8).digest()
        key = int.from_bytes(digest, "big", signed=True)
        session.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))
    return bool(held_leases(session, worker_id=worker_id, holder=holder, limit=1))
