"""The reaper: fails the trials of leases that went silent or ran too long, and
RUNNING trials whose lease was never recorded, re-queueing what may run again.

One pass at a time across API processes (a PostgreSQL advisory lock); each
trial is reaped in a short transaction of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime, timedelta

import sqlalchemy as sa
from optuna.storages import BaseStorage
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from service._optuna_internals import trial_id_of
from service.budget import fail_and_requeue, settle_study, spec_budget, study_budget
from service.config import Settings
from service.db import is_connection_error, session_scope
from service.errors import DatabaseUnavailable
from service.models import Lease, LeaseState, StudyRecord, StudyState, utcnow
from service.study_cache import study_of
from service.trial_lifecycle import fail_leased_trial, orphaned_running_trials

__all__ = ["Reaper", "reap_stale_leases"]

log = logging.getLogger(__name__)

# pg_try_advisory_xact_lock key: one reaper at a time across API processes.
_REAPER_LOCK_KEY = 0x7475_7265  # "ture"


def reap_stale_leases(*, engine: Engine, storage: BaseStorage, settings: Settings) -> list[int]:
    """Fail the trials whose leases expired and re-queue their parameters; returns their ids.

    Also fails the trials that ran past their study's trial_timeout_s (not
    re-queued), and RUNNING trials that never got a lease row. The lease path
    starts its trial in the lease's transaction (service/handout.py), so on a
    database it leaves none; one comes from a writer outside it (Optuna's own
    ask on the study, or a storage with no database). Such a trial is reaped
    once it is one grace period old, and its re-queued copy keeps its retry
    count: no worker ever ran it.

    Each trial is reaped in a short transaction of its own, and Optuna's write
    (through Optuna's engine) comes before ours in it: no transaction of ours
    holds a write lock while Optuna writes, which SQLite, with its single
    writer, would otherwise make wait out its busy timeout.
    """
    now = utcnow()
    reaped: dict[int, int] = {}  # trial id: its TuneFleet study's id
    with session_scope(engine) as scan:
        # One reaper at a time across API processes: the lock lasts as long as
        # this (read-only) transaction, that is, the whole pass.
        if (
            engine.dialect.name == "postgresql"
            and not scan.execute(
                sa.select(sa.func.pg_try_advisory_xact_lock(_REAPER_LOCK_KEY))
            ).scalar_one()
        ):
            return []  # another API process is reaping right now
        stale = scan.scalars(
            sa.select(Lease.trial_id)
            .where(Lease.state == LeaseState.ACTIVE, Lease.expires_at < now)
            .order_by(Lease.expires_at)
            .limit(200)
        ).all()
        for trial_id in stale:
            study_id = _reap_lease(engine, storage, settings, trial_id=trial_id, now=now)
            if study_id is not None:
                reaped[trial_id] = study_id
        for trial_id in _overdue_lease_ids(scan, now=now):
            study_id = _reap_lease(
                engine, storage, settings, trial_id=trial_id, now=now, overdue=True
            )
            if study_id is not None:
                reaped[trial_id] = study_id
        cutoff = now - timedelta(seconds=settings.grace_period_s)
        for study_id, trial_id, number in orphaned_running_trials(scan, started_before=cutoff):
            if _reap_orphan(engine, storage, study_id=study_id, trial_id=trial_id, number=number):
                reaped[trial_id] = study_id
    for study_id in set(reaped.values()):
        with session_scope(engine) as session:
            settle_study(session, storage=storage, study_id=study_id)
    return list(reaped)


def _reap_lease(
    engine: Engine,
    storage: BaseStorage,
    settings: Settings,
    *,
    trial_id: int,
    now: datetime,
    overdue: bool = False,
) -> int | None:
    """Expire one active lease, if it is still due (a heartbeat may have come in);
    returns its study's id, or None when it was not."""
    with session_scope(engine) as session:
        lease = session.scalars(
            sa.select(Lease)
            .where(Lease.trial_id == trial_id, Lease.state == LeaseState.ACTIVE)
            .with_for_update(skip_locked=True)
        ).first()
        if lease is None:
            return None
        record = session.get_one(StudyRecord, lease.study_id)
        if overdue:
            timeout_s = study_budget(record).trial_timeout_s
            if (now - lease.leased_at).total_seconds() <= timeout_s:
                return None
            reason = f"timed out: the trial ran longer than its {timeout_s}s (trial_timeout_s)"
            # Not re-queued: the same parameters would run as long again.
            _expire(storage, lease, record, reason, now=now, requeue=False)
        else:
            if lease.expires_at >= now:
                return None
            silent_s = (now - lease.heartbeat_at).total_seconds()
            reason = (
                f"lease expired: no heartbeat from worker {lease.worker_id} for {silent_s:.1f}s "
                f"(grace period {settings.grace_period_s:g}s)"
            )
            _expire(storage, lease, record, reason, now=now, requeue=True)
        return lease.study_id


def _reap_orphan(
    engine: Engine,
    storage: BaseStorage,
    *,
    study_id: int,
    trial_id: int,
    number: int,
) -> bool:
    """Fail a RUNNING trial that has no lease row, re-queue it without spending a
    retry (unless the study is stopped or its budget spent), and record a lease for it."""
    now = utcnow()
    with session_scope(engine) as session:
        if session.get(Lease, trial_id) is not None:
            return False  # its lease came in after all
        record = session.get_one(StudyRecord, study_id)
        lease = Lease(
            trial_id=trial_id,
            study_id=study_id,
            number=number,
            worker_id="(none)",
            device="(none)",
            leased_at=now,
            heartbeat_at=now,
            expires_at=now,
        )
        reason = "lease lost: the trial started but its lease was never recorded"
        entry = study_of(storage, record)
        counts = entry.counts()
        budget = study_budget(record)
        requeue = (
            record.state != StudyState.STOPPED
            and counts["COMPLETE"] + counts["PRUNED"] < budget.max_trials
        )
        trial, retry = fail_leased_trial(
            storage,
            trial_id=trial_id,
            optuna_study_id=entry.optuna_study_id,
            reason=reason,
            requeue=requeue,
            counts_as_retry=False,
        )
        lease.outcome = {"state": trial.state.name, "reason": reason}
        if retry is not None:
            lease.outcome |= {"retry_trial_id": trial_id_of(retry), "retry_number": retry.number}
        lease.state = LeaseState.EXPIRED
        lease.finished_at = now
        log.warning("trial %s of study %s: %s", number, study_id, reason)
        session.add(lease)
    return True


def _expire(
    storage: BaseStorage,
    lease: Lease,
    record: StudyRecord,
    reason: str,
    *,
    now: datetime,
    requeue: bool,
) -> None:
    """Fail the lease's trial (Optuna's write), then mark the lease expired (ours)."""
    lease.outcome = fail_and_requeue(
        storage=storage, record=record, lease=lease, reason=reason, requeue=requeue
    )
    lease.state = LeaseState.EXPIRED
    lease.finished_at = now
    log.warning("trial %s of study %s: %s", lease.number, record.id, reason)


def _overdue_lease_ids(session: Session, *, now: datetime) -> list[int]:
    """Trial ids of active leases older than their study's trial_timeout_s."""
    rows = session.execute(
        sa.select(Lease.trial_id, Lease.leased_at, StudyRecord.spec)
        .join(StudyRecord, StudyRecord.id == Lease.study_id)
        .where(Lease.state == LeaseState.ACTIVE)
    ).all()
    return [
        trial_id
        for trial_id, leased_at, spec in rows
        if (now - leased_at).total_seconds() > spec_budget(spec).trial_timeout_s
    ]


class Reaper:
    """Runs reap_stale_leases every reaper interval inside the API process.

    A lease is only reaped after the database has been reachable for a whole
    grace period: while it was down no heartbeat could be recorded, so the
    leases that "expired" meanwhile belong to workers that are alive.
    """

    def __init__(self, *, engine: Engine, storage: BaseStorage, settings: Settings) -> None:
        self.engine = engine
        self.storage = storage
        self.settings = settings
        self.healthy_since: float | None = None
        self._task: asyncio.Task | None = None

    def tick(self) -> list[int]:
        """One pass; never raises for an unreachable database."""
        try:
            if self.healthy_since is None:
                with self.engine.connect() as conn:
                    conn.execute(sa.text("SELECT 1"))
                self.healthy_since = time.monotonic()
            if time.monotonic() - self.healthy_since < self.settings.grace_period_s:
                return []
            return reap_stale_leases(
                engine=self.engine, storage=self.storage, settings=self.settings
            )
        except Exception as error:
            if isinstance(error, DatabaseUnavailable) or is_connection_error(error):
                if self.healthy_since is not None:
                    log.warning("reaper: database unreachable; reaping paused until it is back")
                self.healthy_since = None
                return []
            log.exception("reaper pass failed")
            return []

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reaper_interval_s)
            await asyncio.to_thread(self.tick)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="lease-reaper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
