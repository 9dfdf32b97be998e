"""Trials of a study as users see them: list, show, enqueue. No HTTP here."""

from __future__ import annotations

from typing import Any, Literal

import sqlalchemy as sa
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial
from sqlalchemy.orm import Session

from service import optuna_bridge as bridge
from service.errors import Conflict, InvalidSpec
from service.models import Lease, StudyRecord
from service.schemas import LeasePublic, TrialDetail, TrialPublic, TrialsPublic, TrialStateName
from tunefleet.spec import SpecError, StudySpec, validate_params

__all__ = ["enqueue_trial", "list_trials", "show_trial", "trial_detail", "trial_public"]

ARTIFACT_ATTR = "artifact"
FAIL_REASON_ATTRS = ("fail_reason", "tunefleet:fail_reason")


def _spec(record: StudyRecord) -> StudySpec:
    return StudySpec.model_validate(record.spec)


def _optuna_id(record: StudyRecord) -> int:
    if record.optuna_study_id is None:  # only while its creation is in flight
        raise Conflict("the study is still being created; retry shortly")
    return record.optuna_study_id


def list_trials(
    session: Session,
    storage: BaseStorage,
    *,
    record: StudyRecord,
    states: list[TrialStateName] | None = None,
    order_by: str | None = None,
    order: Literal["asc", "desc"] | None = None,
    limit: int = 50,
    offset: int = 0,
) -> TrialsPublic:
    """A page of the study's trials.

    order_by: `number` (default, ascending) or a metric of the study, best
    first (highest for a maximized metric); `order` overrides the direction.
    """
    spec = _spec(record)
    objective: int | None = None
    descending = order == "desc"
    if order_by not in (None, "number"):
        objective = bridge.objective_index(spec, order_by)
        if order is None:
            descending = spec.objectives[objective].direction == "maximize"
    page = bridge.list_trials(
        storage,
        optuna_study_id=_optuna_id(record),
        states=[bridge.TRIAL_STATES[s] for s in states] if states else None,
        order_by=objective,
        descending=descending,
        limit=limit,
        offset=offset,
    )
    leases = _leases(session, [t._trial_id for t in page.trials])
    return TrialsPublic(
        data=[trial_public(t, spec=spec, lease=leases.get(t._trial_id)) for t in page.trials],
        count=page.count,
    )


def show_trial(
    session: Session, storage: BaseStorage, *, record: StudyRecord, number: int
) -> TrialDetail:
    """Trial `number` of the study in full."""
    trial = bridge.get_trial_by_number(storage, optuna_study_id=_optuna_id(record), number=number)
    lease = _leases(session, [trial._trial_id]).get(trial._trial_id)
    return trial_detail(trial, spec=_spec(record), lease=lease)


def enqueue_trial(
    session: Session, storage: BaseStorage, *, record: StudyRecord, params: dict[str, Any]
) -> TrialDetail:
    """Queue a trial with these parameters (checked against the search space)."""
    if record.state in ("stopped", "completed"):
        raise Conflict(f"the study is {record.state}: no new trials can run in it")
    spec = _spec(record)
    try:
        params = validate_params(spec, params)
    except SpecError as error:
        raise InvalidSpec(str(error), path=error.errors[0]["path"].split(".")) from None
    trial = bridge.enqueue_trial(storage, optuna_study_id=_optuna_id(record), params=params)
    return trial_detail(trial, spec=spec, lease=None)


def _leases(session: Session, trial_ids: list[int]) -> dict[int, Lease]:
    if not trial_ids:
        return {}
    rows = session.scalars(sa.select(Lease).where(Lease.trial_id.in_(trial_ids)))
    return {row.trial_id: row for row in rows}


def trial_public(trial: FrozenTrial, *, spec: StudySpec, lease: Lease | None = None) -> TrialPublic:
    return TrialPublic(**_common(trial, spec=spec, lease=lease))


def trial_detail(trial: FrozenTrial, *, spec: StudySpec, lease: Lease | None) -> TrialDetail:
    reason = next(
        (trial.user_attrs[k] for k in FAIL_REASON_ATTRS if k in trial.user_attrs),
        trial.system_attrs.get("fail_reason"),
    )
    return TrialDetail(
        **_common(trial, spec=spec, lease=lease),
        intermediate_values={
            step: bridge.finite_or_none(v) for step, v in sorted(trial.intermediate_values.items())
        },
        user_attrs=_json_safe(trial.user_attrs),
        fail_reason=str(reason) if reason is not None else None,
    )


def _common(trial: FrozenTrial, *, spec: StudySpec, lease: Lease | None) -> dict[str, Any]:
    values = None
    if trial.values is not None:
        values = {
            metric: bridge.finite_or_none(v)
            for metric, v in zip(spec.metric_names, trial.values, strict=False)
        }
    duration = None
    if trial.datetime_start is not None and trial.datetime_complete is not None:
        duration = (trial.datetime_complete - trial.datetime_start).total_seconds()
    artifact = trial.user_attrs.get(ARTIFACT_ATTR)
    return {
        "trial_id": trial._trial_id,
        "number": trial.number,
        "state": trial.state.name.lower(),
        "params": bridge.trial_params(trial),
        "values": values,
        "datetime_start": trial.datetime_start,
        "datetime_complete": trial.datetime_complete,
        "duration_s": duration,
        "last_step": trial.last_step,
        "artifact": str(artifact) if artifact is not None else None,
        "lease": LeasePublic.model_validate(lease) if lease is not None else None,
    }


def _json_safe(value: Any) -> Any:
    """User attributes may hold NaN or infinity, which JSON cannot carry: shown as null."""
    if isinstance(value, float):
        return bridge.finite_or_none(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value
