"""Batched leases: up to `count` trials of one running study in one call.

The study is the one whose turn it is by the same fair share as a single lease
(service/fair_share.py). Its trials are asked one after the other while this
process holds the study's lock and the database holds the study's row lock, as
for a single lease, so the budget holds exactly: 16 workers asking for 16 each
never start more than ``max_trials``. WAITING trials (retries, enqueued) go out
first, then new ones; each new trial is sampled on the study as it stands with
the earlier ones of the batch in it as RUNNING, so the sampler's constant liar
sees them. The batch's trials (Optuna's rows, service/handout.py) and their
leases are written in one transaction: a failure anywhere leaves none of them.

Each trial gets its own lease and lease secret: every later call (heartbeat,
intermediate, complete, fail) stays per trial (service/leasing.py). Asking
again with the same worker_id and token while that worker holds active leases
gives those leases back with new secrets (the answer to the first call was
lost), as a single lease does.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.orm import Session

from service.auth import Principal
from service.budget import study_budget
from service.config import Settings
from service.fair_share import first_lease_in_turn, running_trials_by_owner
from service.handout import start_trial
from service.lease_rows import held_leases, open_leases, renew_leases
from service.models import StudyRecord, StudyState
from service.study_cache import LoadedStudy, forget_loaded_study
from tunefleet.protocol import MAX_BATCH_LEASE, Assignment

__all__ = ["lease_trials"]


def lease_trials(
    session: Session,
    *,
    storage: BaseStorage,
    settings: Settings,
    worker_id: str,
    device: str,
    count: int,
    holder: Principal | None = None,
    warm_backbones: Sequence[str] = (),
) -> list[Assignment]:
    """Up to `count` trials of one study for this worker: the ones it already holds,
    else new leases of the study whose turn it is (among equals, one whose backbone
    the worker holds, and its trials on those backbones first); [] when no running
    study has work. Commits as it goes."""
    if not 1 <= count <= MAX_BATCH_LEASE:
        raise ValueError(f"count must be 1..{MAX_BATCH_LEASE}, got {count}")
    warm = frozenset(warm_backbones)
    return (
        first_lease_in_turn(
            session,
            storage,
            settings=settings,
            holder=holder,
            warm=warm,
            held_again=lambda: _held_again(
                session, storage=storage, settings=settings, worker_id=worker_id, holder=holder
            )[:count],
            lease_from=lambda study_id, entry: _lease_batch(
                session,
                settings=settings,
                study_id=study_id,
                entry=entry,
                worker_id=worker_id,
                device=device,
                count=count,
                holder=holder,
                warm=warm,
            ),
        )
        or []
    )


def _held_again(
    session: Session,
    *,
    storage: BaseStorage,
    settings: Settings,
    worker_id: str,
    holder: Principal | None,
) -> list[Assignment]:
    """The active leases of this worker and token, renewed with new secrets."""
    held = held_leases(session, worker_id=worker_id, holder=holder, limit=MAX_BATCH_LEASE)
    if not held:
        return []
    answers = renew_leases(session, held, storage=storage, settings=settings, holder=holder)
    session.commit()
    return answers


def _room_for(session: Session, record: StudyRecord, settings: Settings, count: int) -> int:
    """How many of `count` the owner's limit of running trials leaves room for."""
    running = running_trials_by_owner(session, [record.owner]).get(record.owner, 0)
    return max(0, min(count, settings.max_running_trials_per_owner - running))


def _lease_batch(
    session: Session,
    *,
    settings: Settings,
    study_id: int,
    entry: LoadedStudy,
    worker_id: str,
    device: str,
    count: int,
    holder: Principal | None,
    warm: frozenset[str],
) -> list[Assignment]:
    # No connection or row lock is held while this thread waits for the study.
    session.commit()
    with entry.lock:
        record = session.scalars(
            sa.select(StudyRecord).where(StudyRecord.id == study_id).with_for_update()
        ).one_or_none()
        if record is None or record.state != StudyState.RUNNING:
            session.commit()
            return []
        budget = study_budget(record)
        # One read of the study; the batch's own trials are added as they are asked.
        seen, counts = entry.for_lease()
        trials: list[FrozenTrial] = list(seen)
        used = counts["COMPLETE"] + counts["PRUNED"] + counts["RUNNING"]
        started = used + counts["FAIL"]
        waiting = counts["WAITING"]
        wanted = _room_for(session, record, settings, count)
        asked: list[FrozenTrial] = []
        while len(asked) < wanted:
            if used >= budget.max_trials or (started >= budget.attempts_cap() and waiting == 0):
                break
            # Uncommitted, as the leases: the batch's trials and leases commit together.
            trial = start_trial(session, entry, trials, warm=warm)
            if any(t.number == trial.number and t.state == TrialState.WAITING for t in trials):
                waiting -= 1  # a re-queued or enqueued trial, claimed
            # The sampler of the next one sees this one RUNNING (the constant liar).
            trials = sorted(
                [t for t in trials if t.number != trial.number] + [trial], key=lambda t: t.number
            )
            used, started = used + 1, started + 1
            asked.append(trial)
        if not asked:
            spent = used >= budget.max_trials or (started >= budget.attempts_cap() and waiting == 0)
            finished = spent and counts["RUNNING"] == 0
            if finished:
                record.state = StudyState.COMPLETED
            session.commit()
            if finished:
                forget_loaded_study(record.id)
            return []
        answers = open_leases(
            session,
            record,
            asked,
            worker_id=worker_id,
            device=device,
            settings=settings,
            holder=holder,
        )
        session.commit()
        return answers
