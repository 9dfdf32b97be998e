"""What happens to a leased trial: heartbeats, intermediate values, the end.

Every call locks the lease's row first (``SELECT ... FOR UPDATE``), so a
complete racing the reaper is decided once: whichever comes second sees the
lease settled. Each answer that ends a lease is kept on it (``outcome``), so
that the same call again gets the same answer and a different one a 409.
"""

from __future__ import annotations

import math
from datetime import timedelta

import optuna
from sqlalchemy.orm import Session

from service.config import Settings
from service.errors import Conflict, InvalidSpec, NotFound
from service.models import Lease, StudyRecord
from service.optuna_bridge import (
    complete_leased_trial,
    fail_leased_trial,
    get_frozen_trial,
    record_intermediate,
    set_trial_progress,
)
from service.scheduling import (
    fail_and_requeue,
    lease_worker_attrs,
    settle_study,
    study_of,
    utcnow,
)
from tunefleet.protocol import (
    HeartbeatAck,
    Progress,
    TrialCompletion,
    TrialFailure,
    TrialOutcome,
)

__all__ = ["complete_trial", "fail_trial", "heartbeat", "report_intermediate"]

_STOPPING_STUDY_STATES = ("paused", "stopped")


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
    storage: optuna.storages.BaseStorage,
    settings: Settings,
    trial_id: int,
    progress: Progress | None = None,
) -> HeartbeatAck:
    """Extend the lease; say stop when the study is paused or stopped or the lease is gone."""
    progress_dict = progress.model_dump(exclude_none=True) if progress else None
    lease = _locked_lease(session, trial_id)
    if lease.state != "active":
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
    storage: optuna.storages.BaseStorage,
    trial_id: int,
    step: int,
    value: float,
) -> bool:
    """Record a validation value; True when the pruner stopped the trial (now PRUNED)."""
    lease = _locked_lease(session, trial_id)
    if lease.state not in ("active", "pruned"):
        raise _lease_gone(lease)
    record = session.get_one(StudyRecord, lease.study_id)
    prune = record_intermediate(
        study_of(storage, record), trial_id=trial_id, step=step, value=value
    )
    pruned_now = prune and lease.state == "active"
    if pruned_now:
        lease.state = "pruned"
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
    storage: optuna.storages.BaseStorage,
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
    if lease.state != "active":
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
        if lease.state == "completed":
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
            optuna_study_id=study_of(storage, record).study._study_id,
            reason=reason,
            worker=lease_worker_attrs(lease),
        )
        lease.state = "failed"
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
        lease.state = "completed"
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
    storage: optuna.storages.BaseStorage,
    trial_id: int,
    failure: TrialFailure,
) -> TrialOutcome:
    """Fail the trial with the worker's reason; re-queue it when the worker let go of it."""
    requeue = failure.wants_requeue()
    lease = _locked_lease(session, trial_id)
    if lease.state != "active":
        if (
            lease.state in ("failed", "released")
            and (lease.outcome or {}).get("reason") == failure.reason
        ):
            return _outcome(lease)
        raise _lease_gone(lease)
    record = session.get_one(StudyRecord, lease.study_id)
    lease.outcome = fail_and_requeue(
        storage=storage, record=record, lease=lease, reason=failure.reason, requeue=requeue
    )
    lease.state = "released" if requeue else "failed"
    lease.finished_at = utcnow()
    answer = _outcome(lease)
    session.commit()
    settle_study(session, storage=storage, study_id=lease.study_id)
    return answer
