"""Which study's trial a lease gets, and the reaper of stale leases.

Fair share: among running studies with work left, a lease goes to the study
with the least load per unit of weight (``priority + 1``), the load being its
running trials plus those it was handed in the last minute; two studies of
priority 3 and 0 share the workers about 4:1.

Atomicity: the budget check and ``study.ask`` run while this process holds the
study's lock and the database holds the study's row lock (``SELECT ... FOR
UPDATE``), so neither 16 concurrent leases nor several API processes ask past
``max_trials``. Optuna itself claims a WAITING trial with a row lock, and the
lease's primary key is the trial id, so two workers never hold one trial.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import optuna
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from service.config import Settings
from service.db import is_connection_error, session_scope
from service.errors import DatabaseUnavailable
from service.models import Lease, StudyRecord
from service.optuna_bridge import (
    ATTR_DEVICE,
    ATTR_WORKER_ID,
    LoadedStudy,
    ask_leased_trial,
    fail_leased_trial,
    get_frozen_trial,
    loaded_study,
    orphaned_running_trials,
    retry_count_of,
)
from tunefleet.protocol import Assignment

__all__ = [
    "Reaper",
    "fail_and_requeue",
    "lease_trial",
    "reap_stale_leases",
    "settle_study",
    "study_budget",
]

log = logging.getLogger(__name__)

# How far back the leases handed out count towards a study's share.
FAIR_SHARE_WINDOW_S = 60.0
# pg_try_advisory_xact_lock key: one reaper at a time across API processes.
_REAPER_LOCK_KEY = 0x7475_7265  # "ture"


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Budget:
    max_trials: int
    max_retries: int
    trial_timeout_s: int

    def attempts_cap(self) -> int:
        """Trials a study may ever start: a study whose every trial fails stops here."""
        return self.max_trials * (1 + self.max_retries)


def study_budget(record: StudyRecord) -> Budget:
    budget = (record.spec or {}).get("budget") or {}
    return Budget(
        max_trials=int(budget.get("max_trials", 50)),
        max_retries=int(budget.get("max_retries", 2)),
        trial_timeout_s=int(budget.get("trial_timeout_s", 900)),
    )


def study_of(storage: optuna.storages.BaseStorage, record: StudyRecord) -> LoadedStudy:
    return loaded_study(
        storage, optuna_study_name=record.optuna_study_name, spec=record.spec, study_key=record.id
    )


def _assignment(lease: Lease, record: StudyRecord, params: dict, settings: Settings) -> Assignment:
    return Assignment(
        trial_id=lease.trial_id,
        study_id=lease.study_id,
        number=lease.number,
        params=params,
        spec=record.spec,
        lease_expires_at=lease.expires_at,
        heartbeat_interval_s=settings.heartbeat_interval_s,
    )


# Leasing -------------------------------------------------------------------


def lease_trial(
    session: Session,
    *,
    storage: optuna.storages.BaseStorage,
    settings: Settings,
    worker_id: str,
    device: str,
) -> Assignment | None:
    """A trial for this worker: the one it already holds, else one of the study whose
    turn it is; None when no running study has work. Commits as it goes."""
    held = session.scalars(
        sa.select(Lease)
        .where(Lease.worker_id == worker_id, Lease.state == "active")
        .order_by(Lease.leased_at.desc())
        .limit(1)
        .with_for_update()
    ).first()
    if held is not None:
        # The answer to an earlier lease was lost: the same lease again.
        now = utcnow()
        held.heartbeat_at = now
        held.expires_at = now + timedelta(seconds=settings.grace_period_s)
        record = session.get_one(StudyRecord, held.study_id)
        params = get_frozen_trial(storage, held.trial_id).params
        session.commit()
        return _assignment(held, record, params, settings)
    for record in _studies_in_turn(session):
        try:
            entry = study_of(storage, record)
        except KeyError:  # its Optuna study was deleted behind TuneFleet's back
            log.warning("study %s has no Optuna study %r", record.id, record.optuna_study_name)
            continue
        assignment = _lease_from_study(
            session,
            storage=storage,
            settings=settings,
            study_id=record.id,
            entry=entry,
            worker_id=worker_id,
            device=device,
        )
        if assignment is not None:
            return assignment
    return None


def _studies_in_turn(session: Session) -> list[StudyRecord]:
    """Running studies, the one furthest below its fair share first.

    A study's load is its running trials plus the trials it was handed in the
    last minute, per unit of weight (priority + 1): with long trials the
    running ones decide, with short ones (many leases a minute) the rate does,
    so both end up shared in proportion to the weights.
    """
    since = utcnow() - timedelta(seconds=FAIR_SHARE_WINDOW_S)
    active = sa.func.count(Lease.trial_id).filter(Lease.state == "active")
    recent = sa.func.count(Lease.trial_id).filter(Lease.leased_at > since)
    rows = session.execute(
        sa.select(StudyRecord, active, recent)
        .outerjoin(Lease, Lease.study_id == StudyRecord.id)
        # A study whose Optuna study is still being created has no trials to give.
        .where(StudyRecord.state == "running", StudyRecord.optuna_study_id.is_not(None))
        .group_by(StudyRecord.id)
    ).all()

    def turn(row) -> tuple[float, float, int]:
        record, running, handed_out = row
        weight = max(record.priority, 0) + 1
        return ((running + handed_out) / weight, running / weight, record.id)

    return [row[0] for row in sorted(rows, key=turn)]


def _lease_from_study(
    session: Session,
    *,
    storage: optuna.storages.BaseStorage,
    settings: Settings,
    study_id: int,
    entry: LoadedStudy,
    worker_id: str,
    device: str,
) -> Assignment | None:
    # End the transaction (and give the connection back) before waiting for the
    # study: a thread that waits holds no connection and no row lock.
    session.commit()
    with entry.lock:
        record = session.scalars(
            sa.select(StudyRecord).where(StudyRecord.id == study_id).with_for_update()
        ).one_or_none()
        if record is None or record.state != "running":
            session.commit()
            return None
        budget = study_budget(record)
        # One read of the study serves the budget check and the sampler.
        trials = entry.trials()
        counts = Counter(t.state.name for t in trials)
        used = counts["COMPLETE"] + counts["PRUNED"] + counts["RUNNING"]
        started = used + counts["FAIL"]
        if used >= budget.max_trials or (
            started >= budget.attempts_cap() and counts["WAITING"] == 0
        ):
            if counts["RUNNING"] == 0:
                record.state = "completed"
            session.commit()
            return None
        trial = ask_leased_trial(entry, trials)
        now = utcnow()
        lease = Lease(
            trial_id=trial._trial_id,
            study_id=record.id,
            number=trial.number,
            worker_id=worker_id,
            device=device,
            state="active",
            leased_at=now,
            heartbeat_at=now,
            expires_at=now + timedelta(seconds=settings.grace_period_s),
        )
        session.add(lease)
        session.commit()
        return _assignment(lease, record, trial.params, settings)


# Ending trials ---------------------------------------------------------------


def fail_and_requeue(
    *,
    storage: optuna.storages.BaseStorage,
    record: StudyRecord,
    lease: Lease,
    reason: str,
    requeue: bool,
) -> dict:
    """Fail the lease's trial and, when asked and allowed, re-queue its parameters:
    within the spec's max_retries, never for a stopped study or a spent budget.

    Returns the outcome to keep on the lease: state, reason, and the retry's trial.
    """
    entry = study_of(storage, record)
    retry = False
    if requeue and record.state != "stopped":
        budget = study_budget(record)
        counts = entry.counts()
        trial = get_frozen_trial(storage, lease.trial_id)
        if (
            retry_count_of(trial) < budget.max_retries
            and counts["COMPLETE"] + counts["PRUNED"] < budget.max_trials
        ):
            retry = True
    trial, retry_trial = fail_leased_trial(
        storage,
        trial_id=lease.trial_id,
        optuna_study_id=entry.study._study_id,
        reason=reason,
        requeue=retry,
        worker=lease_worker_attrs(lease),
    )
    outcome: dict = {"state": trial.state.name, "reason": reason}
    if retry_trial is not None:
        outcome["retry_trial_id"] = retry_trial._trial_id
        outcome["retry_number"] = retry_trial.number
    return outcome


def lease_worker_attrs(lease: Lease) -> dict[str, str]:
    """Who ran a trial, for its user attributes (and so for the dashboard)."""
    return {ATTR_WORKER_ID: lease.worker_id, ATTR_DEVICE: lease.device}


def settle_study(session: Session, *, storage: optuna.storages.BaseStorage, study_id: int) -> None:
    """Mark a running study completed once its budget is used up and nothing runs."""
    record = session.get(StudyRecord, study_id)
    if record is None or record.state != "running":
        return
    counts = study_of(storage, record).counts()
    budget = study_budget(record)
    if counts["RUNNING"]:
        return
    done = counts["COMPLETE"] + counts["PRUNED"] >= budget.max_trials
    started = counts["COMPLETE"] + counts["PRUNED"] + counts["FAIL"]
    exhausted = started >= budget.attempts_cap() and counts["WAITING"] == 0
    if done or exhausted:
        session.execute(
            sa.update(StudyRecord)
            .where(StudyRecord.id == study_id, StudyRecord.state == "running")
            .values(state="completed", updated_at=utcnow())
        )
        session.commit()


# The reaper ------------------------------------------------------------------


def reap_stale_leases(
    *, engine: Engine, storage: optuna.storages.BaseStorage, settings: Settings
) -> list[int]:
    """Fail the trials whose leases expired and re-queue their parameters; returns their ids.

    Also fails the trials that ran past their study's trial_timeout_s (not
    re-queued), and RUNNING trials that never got a lease row (the API lost the
    database between Optuna's ask and the lease's commit).

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
            .where(Lease.state == "active", Lease.expires_at < now)
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
        cutoff = now - timedelta(seconds=2 * settings.grace_period_s)
        for study_id, trial_id, number in orphaned_running_trials(scan, started_before=cutoff):
            if _reap_orphan(engine, storage, study_id=study_id, trial_id=trial_id, number=number):
                reaped[trial_id] = study_id
    for study_id in set(reaped.values()):
        with session_scope(engine) as session:
            settle_study(session, storage=storage, study_id=study_id)
    return list(reaped)


def _reap_lease(
    engine: Engine,
    storage: optuna.storages.BaseStorage,
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
            .where(Lease.trial_id == trial_id, Lease.state == "active")
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
    storage: optuna.storages.BaseStorage,
    *,
    study_id: int,
    trial_id: int,
    number: int,
) -> bool:
    """Fail a RUNNING trial that has no lease row, and record a lease for it."""
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
        _expire(storage, lease, record, reason, now=now, requeue=True)
        session.add(lease)
    return True


def _expire(
    storage: optuna.storages.BaseStorage,
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
    lease.state = "expired"
    lease.finished_at = now
    log.warning("trial %s of study %s: %s", lease.number, record.id, reason)


def _overdue_lease_ids(session: Session, *, now: datetime) -> list[int]:
    """Trial ids of active leases older than their study's trial_timeout_s."""
    rows = session.execute(
        sa.select(Lease.trial_id, Lease.leased_at, StudyRecord.spec)
        .join(StudyRecord, StudyRecord.id == Lease.study_id)
        .where(Lease.state == "active")
    ).all()
    return [
        trial_id
        for trial_id, leased_at, spec in rows
        if (now - leased_at).total_seconds()
        > int(((spec or {}).get("budget") or {}).get("trial_timeout_s", 900))
    ]


class Reaper:
    """Runs reap_stale_leases every reaper interval inside the API process.

    A lease is only reaped after the database has been reachable for a whole
    grace period: while it was down no heartbeat could be recorded, so the
    leases that "expired" meanwhile belong to workers that are alive.
    """

    def __init__(
        self, *, engine: Engine, storage: optuna.storages.BaseStorage, settings: Settings
    ) -> None:
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
