"""The worker protocol's five calls: lease a trial, heartbeat, report an
intermediate value, complete, fail.

Which study: service/fair_share.py (owners first, then an owner's studies by
priority; a backbone the worker holds breaks ties). Who: a lease is bound to the
token that took it and to a secret returned with the assignment
(service/lease_holder.py); every later call needs both, else 404.

Atomicity: the budget check and the ask run while this process holds the
study's lock and the database holds the study's row lock (``SELECT ... FOR
UPDATE``), so neither 16 concurrent leases nor several API processes ask past
``max_trials``. Optuna itself claims a WAITING trial with a row lock, and the
lease's primary key is the trial id, so two workers never hold one trial.

Every call after the lease locks the lease's row first, so a complete racing
the reaper is decided once: whichever comes second sees the lease settled.
Each answer that ends a lease is kept on it (``outcome``), so that the same
call again gets the same answer and a different one a 409.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import timedelta

import sqlalchemy as sa
from optuna.storages import BaseStorage
from sqlalchemy.orm import Session

from service.auth import Principal
from service.budget import fail_and_requeue, lease_worker_attrs, settle_study, study_budget
from service.config import Settings
from service.errors import Conflict, InvalidSpec, NotFound
from service.fair_share import first_lease_in_turn
from service.handout import start_trial
from service.lease_holder import check_completion, check_holder
from service.lease_rows import held_leases, open_leases, renew_leases
from service.models import Lease, LeaseState, StudyRecord, StudyState, utcnow
from service.study_cache import LoadedStudy, forget_loaded_study, study_of
from service.trial_lifecycle import (
    complete_leased_trial,
    fail_leased_trial,
    get_frozen_trial,
    record_intermediate,
    set_trial_progress,
)
from tunefleet.protocol import (
    Assignment,
    HeartbeatAck,
    Progress,
    PruneDecision,
    TrialCompletion,
    TrialFailure,
    TrialOutcome,
)

__all__ = ["complete_trial", "fail_trial", "heartbeat", "lease_trial", "report_intermediate"]

_STOPPING_STUDY_STATES = (StudyState.PAUSED, StudyState.STOPPED, StudyState.FAILED)


# Leasing -------------------------------------------------------------------


def lease_trial(
    session: Session,
    *,
    storage: BaseStorage,
    settings: Settings,
    worker_id: str,
    device: str,
    holder: Principal | None = None,
    warm_backbones: Sequence[str] = (),
) -> Assignment | None:
    """A trial for this worker: the one it already holds, else one of the study whose
    turn it is (among equals, one whose backbone the worker holds); None when no
    running study has work. Commits as it goes.

    `holder` is the token asking (None: an in-process caller); a lease held under
    the same worker_id by another token is not this worker's."""
    warm = frozenset(warm_backbones)

    def held_again() -> Assignment | None:
        held = held_leases(session, worker_id=worker_id, holder=holder, limit=1)
        if not held:
            return None
        # The answer to an earlier lease was lost: the same lease again.
        (answer,) = renew_leases(session, held, storage=storage, settings=settings, holder=holder)
        session.commit()
        return answer

    return first_lease_in_turn(
        session,
        storage,
        settings=settings,
        holder=holder,
        warm=warm,
        held_again=held_again,
        lease_from=lambda study_id, entry: _lease_from_study(
            session,
            storage=storage,
            settings=settings,
            study_id=study_id,
            entry=entry,
            worker_id=worker_id,
            device=device,
            holder=holder,
            warm=warm,
        ),
    )


def _lease_from_study(
    session: Session,
    *,
    storage: BaseStorage,
    settings: Settings,
    study_id: int,
    entry: LoadedStudy,
    worker_id: str,
    device: str,
    holder: Principal | None,
    warm: frozenset[str],
) -> Assignment | None:
    # End the transaction (and give the connection back) before waiting for the
    # study: a thread that waits holds no connection and no row lock.
    session.commit()
    with entry.lock:
        record = session.scalars(
            sa.select(StudyRecord).where(StudyRecord.id == study_id).with_for_update()
        ).one_or_none()
        if record is None or record.state != StudyState.RUNNING:
            session.commit()
            return None
        budget = study_budget(record)
        # One read of the study serves the budget check and the sampler.
        trials, counts = entry.for_lease()
        used = counts["COMPLETE"] + counts["PRUNED"] + counts["RUNNING"]
        started = used + counts["FAIL"]
        if used >= budget.max_trials or (
            started >= budget.attempts_cap() and counts["WAITING"] == 0
        ):
            finished = counts["RUNNING"] == 0
            if finished:
                record.state = StudyState.COMPLETED
            session.commit()
            if finished:
                forget_loaded_study(record.id)
            return None
        trial = start_trial(session, entry, trials, warm=warm)  # uncommitted, as the lease
        (answer,) = open_leases(
            session,
            record,
            [trial],
            worker_id=worker_id,
            device=device,
            settings=settings,
            holder=holder,
        )
        session.commit()
        return answer


# The calls on a leased trial ------------------------------------------------


# Who calls on a lease: the token and the lease secret it sent (None: in-process).
Caller = tuple[Principal, str | None] | None


def _locked_lease(session: Session, trial_id: int, caller: Caller) -> Lease:
    lease = session.get(Lease, trial_id, with_for_update=True)
    if lease is None:
        raise NotFound(
            f"trial {trial_id} has no lease; a worker gets trials from POST /api/v1/leases"
        )
    if caller is not None:
        holder, secret = caller
        check_holder(lease, holder=holder, secret=secret)
    return lease


def _lease_gone(lease: Lease) -> Conflict:
    outcome = lease.outcome or {}
    detail = f": {outcome['reason']}" if outcome.get("reason") else ""
    retry = (
        f"; its parameters were re-queued as trial {outcome['retry_number']}"
        if "retry_number" in outcome
        else ""
    )
    return Conflict(f"the lease of trial {lease.number} is {lease.state}{detail}{retry}")


def _outcome(lease: Lease) -> TrialOutcome:
    outcome = lease.outcome or {}
    return TrialOutcome(
        trial_id=lease.trial_id,
        number=lease.number,
        state=outcome.get("state", "RUNNING"),
        values=outcome.get("values"),
        reason=outcome.get("reason"),
        retry_trial_id=outcome.get("retry_trial_id"),
    )


def heartbeat(
    session: Session,
    *,
    storage: BaseStorage,
    settings: Settings,
    trial_id: int,
    progress: Progress | None = None,
    caller: Caller = None,
) -> HeartbeatAck:
    """Extend the lease; say stop when the study is paused or stopped or the lease is gone."""
    progress_dict = progress.model_dump(exclude_none=True) if progress else None
    lease = _locked_lease(session, trial_id, caller)
    if lease.state != LeaseState.ACTIVE:
        return HeartbeatAck(stop=True, reason=f"the lease is {lease.state}")
    now = utcnow()
    lease.heartbeat_at = now
    lease.expires_at = now + timedelta(seconds=settings.grace_period_s)
    new_progress = progress_dict is not None and progress_dict != lease.progress
    if new_progress:
        lease.progress = progress_dict
    state = session.get_one(StudyRecord, lease.study_id).state
    ack = HeartbeatAck(
        stop=state in _STOPPING_STUDY_STATES,
        reason=f"the study was {state}" if state in _STOPPING_STUDY_STATES else None,
        lease_expires_at=lease.expires_at,
    )
    session.commit()
    if new_progress:
        set_trial_progress(storage, trial_id, progress_dict)
    return ack


def report_intermediate(
    session: Session,
    *,
    storage: BaseStorage,
    trial_id: int,
    step: int,
    value: float,
    caller: Caller = None,
) -> PruneDecision:
    """Record a validation value; prune when the pruner stopped the trial (now PRUNED)
    or the value was not finite (the trial is failed with the reason)."""
    lease = _locked_lease(session, trial_id, caller)
    if lease.state not in (LeaseState.ACTIVE, LeaseState.PRUNED):
        raise _lease_gone(lease)
    record = session.get_one(StudyRecord, lease.study_id)
    if not math.isfinite(value) and lease.state == LeaseState.ACTIVE:
        reason = f"the trial reported a non-finite value {value!r} at step {step}"
        _fail_lease(session, storage=storage, lease=lease, record=record, reason=reason)
        return PruneDecision(prune=True, reason=reason)
    prune = record_intermediate(
        study_of(storage, record), trial_id=trial_id, step=step, value=value
    )
    pruned_now = prune and lease.state == LeaseState.ACTIVE
    if pruned_now:
        lease.state = LeaseState.PRUNED
        lease.finished_at = utcnow()
        lease.outcome = {"state": "PRUNED", "reason": f"pruned at step {step}"}
    session.commit()
    if pruned_now:
        settle_study(session, storage=storage, study_id=lease.study_id)
    return PruneDecision(prune=prune)


def _fail_lease(
    session: Session,
    *,
    storage: BaseStorage,
    lease: Lease,
    record: StudyRecord,
    reason: str,
    request: dict | None = None,
) -> None:
    """Fail the leased trial with the service's reason (no re-queue), commit and settle."""
    trial, _ = fail_leased_trial(
        storage,
        trial_id=lease.trial_id,
        optuna_study_id=study_of(storage, record).optuna_study_id,
        reason=reason,
        worker=lease_worker_attrs(lease),
    )
    lease.state = LeaseState.FAILED
    lease.finished_at = utcnow()
    lease.outcome = {"state": trial.state.name, "reason": reason, "request": request}
    session.commit()
    settle_study(session, storage=storage, study_id=lease.study_id)


def _fingerprint(values: dict[str, float]) -> dict[str, str]:
    """The values as exact strings: comparable, and storable even when NaN."""
    return {metric: repr(float(v)) for metric, v in sorted(values.items())}


def complete_trial(
    session: Session,
    *,
    storage: BaseStorage,
    trial_id: int,
    completion: TrialCompletion,
    settings: Settings,
    caller: Caller = None,
) -> TrialOutcome:
    """Tell the final values; NaN or infinite values fail the trial with a reason.

    Each value must lie in its metric's range, attrs within the depth and size
    limits, the artifact under the artifact root (422, or 413 for size)."""
    lease = _locked_lease(session, trial_id, caller)
    record = session.get_one(StudyRecord, lease.study_id)
    metrics = [o["metric"] for o in record.spec["objectives"]]
    missing = [m for m in metrics if m not in completion.values]
    extra = sorted(set(completion.values) - set(metrics))
    if missing or extra:
        raise InvalidSpec(
            f"values must have one number for each objective of the study {metrics}"
            + (f"; missing {missing}" if missing else "")
            + (f"; not objectives of this study: {extra}" if extra else ""),
            path=["values", (missing or extra)[0]],
        )
    artifact = check_completion(completion, settings)
    fingerprint = _fingerprint(completion.values)
    values = [float(completion.values[m]) for m in metrics]
    if lease.state != LeaseState.ACTIVE:
        if (lease.outcome or {}).get("request") == fingerprint:
            return _outcome(lease)  # the same call again: the same answer
        trial = get_frozen_trial(storage, trial_id)
        if trial.state.name == "COMPLETE" and trial.values == values:
            # Told before the lease was settled (the database went away in
            # between): the result is in, whatever the lease says.
            return TrialOutcome(
                trial_id=trial_id,
                number=lease.number,
                state="COMPLETE",
                values=dict(zip(metrics, values, strict=True)),
            )
        if lease.state == LeaseState.COMPLETED:
            raise Conflict(
                f"trial {lease.number} was already completed with values "
                f"{lease.outcome['values']}; values cannot be changed"
            )
        raise _lease_gone(lease)
    if not all(math.isfinite(v) for v in values):
        reason = f"the trial returned non-finite values {completion.values}"
        _fail_lease(
            session,
            storage=storage,
            lease=lease,
            record=record,
            reason=reason,
            request=fingerprint,
        )
        return _outcome(lease)
    complete_leased_trial(
        study_of(storage, record),
        trial_id=trial_id,
        values=values,
        attrs=completion.attrs,
        artifact=artifact,
        worker=lease_worker_attrs(lease),
    )
    lease.state = LeaseState.COMPLETED
    lease.outcome = {
        "state": "COMPLETE",
        "values": dict(zip(metrics, values, strict=True)),
        "request": fingerprint,
    }
    lease.finished_at = utcnow()
    answer = _outcome(lease)
    session.commit()
    settle_study(session, storage=storage, study_id=lease.study_id)
    return answer


def fail_trial(
    session: Session,
    *,
    storage: BaseStorage,
    trial_id: int,
    failure: TrialFailure,
    caller: Caller = None,
) -> TrialOutcome:
    """Fail the trial with the worker's reason; re-queue it when the worker let go of it."""
    requeue = failure.wants_requeue()
    lease = _locked_lease(session, trial_id, caller)
    if lease.state != LeaseState.ACTIVE:
        if (
            lease.state in (LeaseState.FAILED, LeaseState.RELEASED)
            and (lease.outcome or {}).get("reason") == failure.reason
        ):
            return _outcome(lease)
        raise _lease_gone(lease)
    record = session.get_one(StudyRecord, lease.study_id)
    lease.outcome = fail_and_requeue(
        storage=storage,
        record=record,
        lease=lease,
        reason=failure.reason,
        requeue=requeue,
        detail=failure.detail,
    )
    lease.state = LeaseState.RELEASED if requeue else LeaseState.FAILED
    lease.finished_at = utcnow()
    answer = _outcome(lease)
    session.commit()
    settle_study(session, storage=storage, study_id=lease.study_id)
    return answer
