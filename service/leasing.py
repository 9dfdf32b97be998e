"""The worker protocol's five calls: lease a trial, heartbeat, report an
intermediate value, complete, fail.

Fair share: among running studies with work left, a lease goes to the study
with the least load per unit of weight (``priority + 1``), the load being its
running trials plus those it was handed in the last minute; two studies of
priority 3 and 0 share the workers about 4:1. Among studies at the same load, a
study whose source model the worker already holds loaded (``warm_backbones``)
goes first: the backbone stays warm and the sampler is never steered (no
parameter is re-drawn; only which study's turn comes first changes).

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

import logging
import math
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta

import sqlalchemy as sa
from optuna.storages import BaseStorage
from sqlalchemy.orm import Session

from service._optuna_internals import trial_id_of
from service.budget import fail_and_requeue, lease_worker_attrs, settle_study, study_budget
from service.config import Settings
from service.errors import Conflict, InvalidSpec, NotFound
from service.models import Lease, LeaseState, StudyRecord, StudyState, utcnow
from service.study_cache import LoadedStudy, study_of
from service.trial_lifecycle import (
    ask_leased_trial,
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
    TrialCompletion,
    TrialFailure,
    TrialOutcome,
)

__all__ = ["complete_trial", "fail_trial", "heartbeat", "lease_trial", "report_intermediate"]

log = logging.getLogger(__name__)

# How far back the leases handed out count towards a study's share.
FAIR_SHARE_WINDOW_S = 60.0
_STOPPING_STUDY_STATES = (StudyState.PAUSED, StudyState.STOPPED)


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
    storage: BaseStorage,
    settings: Settings,
    worker_id: str,
    device: str,
    warm_backbones: Sequence[str] = (),
) -> Assignment | None:
    """A trial for this worker: the one it already holds, else one of the study whose
    turn it is (among equals, one whose backbone the worker holds); None when no
    running study has work. Commits as it goes."""
    held = session.scalars(
        sa.select(Lease)
        .where(Lease.worker_id == worker_id, Lease.state == LeaseState.ACTIVE)
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
    for record in _studies_in_turn(session, warm=frozenset(warm_backbones)):
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


def _studies_in_turn(session: Session, *, warm: frozenset[str] = frozenset()) -> list[StudyRecord]:
    """Running studies, the one furthest below its fair share first.

    A study's load is its running trials plus the trials it was handed in the
    last minute, per unit of weight (priority + 1): with long trials the
    running ones decide, with short ones (many leases a minute) the rate does,
    so both end up shared in proportion to the weights. A study that uses a
    backbone in `warm` counts half a lease less: it goes first among studies at
    the same load, never before one further below its share.
    """
    since = utcnow() - timedelta(seconds=FAIR_SHARE_WINDOW_S)
    active = sa.func.count(Lease.trial_id).filter(Lease.state == LeaseState.ACTIVE)
    recent = sa.func.count(Lease.trial_id).filter(Lease.leased_at > since)
    rows = session.execute(
        sa.select(StudyRecord, active, recent)
        .outerjoin(Lease, Lease.study_id == StudyRecord.id)
        # A study whose Optuna study is still being created has no trials to give.
        .where(StudyRecord.state == StudyState.RUNNING, StudyRecord.optuna_study_id.is_not(None))
        .group_by(StudyRecord.id)
    ).all()

    def turn(row) -> tuple[float, float, int]:
        record, running, handed_out = row
        weight = max(record.priority, 0) + 1
        load = running + handed_out - (0.5 if _uses_warm_backbone(record, warm) else 0.0)
        return (load / weight, running / weight, record.id)

    return [row[0] for row in sorted(rows, key=turn)]


def _uses_warm_backbone(record: StudyRecord, warm: frozenset[str]) -> bool:
    """Whether the study's source model (or one of its searched ones) is in `warm`."""
    if not warm:
        return False
    spec = record.spec or {}
    searched = (spec.get("search_space") or {}).get("source_model") or {}
    choices = searched.get("choices") if isinstance(searched, dict) else None
    return bool(warm.intersection(choices or [spec.get("source_model")]))


def _lease_from_study(
    session: Session,
    *,
    storage: BaseStorage,
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
        if record is None or record.state != StudyState.RUNNING:
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
                record.state = StudyState.COMPLETED
            session.commit()
            return None
        trial = ask_leased_trial(entry, trials)
        now = utcnow()
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
        session.add(lease)
        session.commit()
        return _assignment(lease, record, trial.params, settings)


# The calls on a leased trial ------------------------------------------------


def _locked_lease(session: Session, trial_id: int) -> Lease:
    lease = session.get(Lease, trial_id, with_for_update=True)
    if lease is None:
        raise NotFound(
            f"trial {trial_id} has no lease; a worker gets trials from POST /api/v1/leases"
        )
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
) -> HeartbeatAck:
    """Extend the lease; say stop when the study is paused or stopped or the lease is gone."""
    progress_dict = progress.model_dump(exclude_none=True) if progress else None
    lease = _locked_lease(session, trial_id)
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
) -> bool:
    """Record a validation value; True when the pruner stopped the trial (now PRUNED)."""
    lease = _locked_lease(session, trial_id)
    if lease.state not in (LeaseState.ACTIVE, LeaseState.PRUNED):
        raise _lease_gone(lease)
    record = session.get_one(StudyRecord, lease.study_id)
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
    return prune


def _fingerprint(values: dict[str, float]) -> dict[str, str]:
    """The values as exact strings: comparable, and storable even when NaN."""
    return {metric: repr(float(v)) for metric, v in sorted(values.items())}


def complete_trial(
    session: Session,
    *,
    storage: BaseStorage,
    trial_id: int,
    completion: TrialCompletion,
) -> TrialOutcome:
    """Tell the final values; NaN or infinite values fail the trial with a reason."""
    lease = _locked_lease(session, trial_id)
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
    now = utcnow()
    if not all(math.isfinite(v) for v in values):
        reason = f"the trial returned non-finite values {completion.values}"
        trial, _ = fail_leased_trial(
            storage,
            trial_id=trial_id,
            optuna_study_id=study_of(storage, record).optuna_study_id,
            reason=reason,
            worker=lease_worker_attrs(lease),
        )
        lease.state = LeaseState.FAILED
        lease.outcome = {"state": trial.state.name, "reason": reason, "request": fingerprint}
    else:
        complete_leased_trial(
            study_of(storage, record),
            trial_id=trial_id,
            values=values,
            attrs=completion.attrs,
            artifact=completion.artifact,
            worker=lease_worker_attrs(lease),
        )
        lease.state = LeaseState.COMPLETED
        lease.outcome = {
            "state": "COMPLETE",
            "values": dict(zip(metrics, values, strict=True)),
            "request": fingerprint,
        }
    lease.finished_at = now
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
) -> TrialOutcome:
    """Fail the trial with the worker's reason; re-queue it when the worker let go of it."""
    requeue = failure.wants_requeue()
    lease = _locked_lease(session, trial_id)
    if lease.state != LeaseState.ACTIVE:
        if (
            lease.state in (LeaseState.FAILED, LeaseState.RELEASED)
            and (lease.outcome or {}).get("reason") == failure.reason
        ):
            return _outcome(lease)
        raise _lease_gone(lease)
    record = session.get_one(StudyRecord, lease.study_id)
    lease.outcome = fail_and_requeue(
        storage=storage, record=record, lease=lease, reason=failure.reason, requeue=requeue
    )
    lease.state = LeaseState.RELEASED if requeue else LeaseState.FAILED
    lease.finished_at = utcnow()
    answer = _outcome(lease)
    session.commit()
    settle_study(session, storage=storage, study_id=lease.study_id)
    return answer
