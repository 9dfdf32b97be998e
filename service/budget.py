"""A study's budget and what follows from it: when a failed trial is re-queued,
when a study is complete, and when it has failed.

A trial that fails for good (not re-queued) counts against
``budget.max_failed_trials``; past it the study is ``failed`` with the last
reason, so a study that cannot run (a missing weights file, a device that is
not there) stops instead of burning trials without end.

The budget's defaults and bounds are the spec's (`tunefleet.spec.Budget`);
a study's row keeps its spec as validated JSON.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from optuna.storages import BaseStorage
from sqlalchemy.orm import Session

from service._optuna_internals import trial_id_of
from service.models import Lease, StudyRecord, StudyState, utcnow
from service.study_cache import forget_loaded_study, study_of
from service.trial_lifecycle import (
    ATTR_DEVICE,
    ATTR_WORKER_ID,
    fail_leased_trial,
    get_frozen_trial,
    retry_count_of,
)
from tunefleet import spec as specs

__all__ = [
    "Budget",
    "fail_and_requeue",
    "lease_worker_attrs",
    "settle_study",
    "spec_budget",
    "study_budget",
]


@dataclass(frozen=True)
class Budget:
    max_trials: int
    max_retries: int
    trial_timeout_s: int
    max_failed_trials: int

    def attempts_cap(self) -> int:
        """Trials a study may ever start: a study whose every trial fails stops here."""
        return self.max_trials * (1 + self.max_retries)


def spec_budget(spec: dict | None) -> Budget:
    """The budget of a spec stored as JSON, with the spec's defaults for what it leaves out."""
    budget = specs.Budget.model_validate((spec or {}).get("budget") or {})
    return Budget(
        max_trials=budget.max_trials,
        max_retries=budget.max_retries,
        trial_timeout_s=budget.trial_timeout_s,
        max_failed_trials=budget.failed_trials_cap(),
    )


def study_budget(record: StudyRecord) -> Budget:
    return spec_budget(record.spec)


def lease_worker_attrs(lease: Lease) -> dict[str, str]:
    """Who ran a trial, for its user attributes (and so for the dashboard)."""
    return {ATTR_WORKER_ID: lease.worker_id, ATTR_DEVICE: lease.device}


def fail_and_requeue(
    *,
    storage: BaseStorage,
    record: StudyRecord,
    lease: Lease,
    reason: str,
    requeue: bool,
    detail: str | None = None,
) -> dict:
    """Fail the lease's trial and, when asked and allowed, re-queue its parameters:
    within the spec's max_retries, never for a stopped study or a spent budget.

    Returns the outcome to keep on the lease: state, reason, and the retry's trial.
    """
    entry = study_of(storage, record)
    retry = False
    if requeue and record.state != StudyState.STOPPED:
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
        optuna_study_id=entry.optuna_study_id,
        reason=reason,
        requeue=retry,
        worker=lease_worker_attrs(lease),
        detail=detail,
    )
    if not retry and record.state == StudyState.RUNNING:
        # Failed for good: counted (in SQL, so that concurrent failures add up).
        record.failed_trials = StudyRecord.failed_trials + 1
        record.last_failure = reason[:2000]
    outcome: dict = {"state": trial.state.name, "reason": reason}
    if retry_trial is not None:
        outcome["retry_trial_id"] = trial_id_of(retry_trial)
        outcome["retry_number"] = retry_trial.number
    return outcome


def settle_study(session: Session, *, storage: BaseStorage, study_id: int) -> None:
    """Mark a running study failed once too many trials failed for good, or completed
    once its budget is used up and nothing runs."""
    record = session.get(StudyRecord, study_id, populate_existing=True)
    if record is None or record.state != StudyState.RUNNING:
        return
    budget = study_budget(record)
    if record.failed_trials >= budget.max_failed_trials:
        # At once, running trials or not: their workers are told to stop.
        _finish(session, study_id, StudyState.FAILED)
        return
    counts = study_of(storage, record).counts()
    if counts["RUNNING"]:
        return
    finished = counts["COMPLETE"] + counts["PRUNED"]
    done = finished >= budget.max_trials
    started = finished + counts["FAIL"]
    exhausted = started >= budget.attempts_cap() and counts["WAITING"] == 0
    if done or exhausted:
        # Every attempt used and not one result: that is a failure, not a completion.
        _finish(session, study_id, StudyState.FAILED if finished == 0 else StudyState.COMPLETED)


def _finish(session: Session, study_id: int, state: StudyState) -> None:
    session.execute(
        sa.update(StudyRecord)
        .where(StudyRecord.id == study_id, StudyRecord.state == StudyState.RUNNING)
        .values(state=state, updated_at=utcnow())
    )
    session.commit()
    # A finished study hands out nothing more: free its Study objects now rather than
    # when the cache's least-recently-used rule reaches them (a later call reloads them).
    forget_loaded_study(study_id)
