"""Trials of a study as users see them: list, show, enqueue. No HTTP here."""

from __future__ import annotations

import math
from typing import Any, Literal

import sqlalchemy as sa
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial
from sqlalchemy.orm import Session

from service import optuna_store
from service._optuna_internals import trial_id_of
from service.errors import Conflict, InvalidSpec
from service.models import Lease, StudyRecord, StudyState
from service.schemas import LeasePublic, TrialDetail, TrialPublic, TrialsPublic, TrialStateName
from service.trial_lifecycle import ATTR_ARTIFACT, ATTR_FAIL_DETAIL, ATTR_FAIL_REASON
from tunefleet.spec import SpecError, StudySpec, validate_params

__all__ = ["enqueue_trial", "list_trials", "show_trial", "trial_detail", "trial_public"]


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
        objective = objective_index(spec, order_by)
        if order is None:
            descending = spec.objectives[objective].direction == "maximize"
    page = optuna_store.list_trials(
        storage,
        optuna_study_id=_optuna_id(record),
        states=[optuna_store.TRIAL_STATES[s] for s in states] if states else None,
        order_by=objective,
        descending=descending,
        limit=limit,
        offset=offset,
    )
    leases = _leases(session, [trial_id_of(t) for t in page.trials])
    return TrialsPublic(
        data=[trial_public(t, spec=spec, lease=leases.get(trial_id_of(t))) for t in page.trials],
        count=page.count,
    )


def show_trial(
    session: Session,
    storage: BaseStorage,
    *,
    record: StudyRecord,
    number: int,
    as_admin: bool = False,
) -> TrialDetail:
    """Trial `number` of the study in full; with ``as_admin`` also the failure's detail."""
    trial = optuna_store.get_trial_by_number(
        storage, optuna_study_id=_optuna_id(record), number=number
    )
    lease = _leases(session, [trial_id_of(trial)]).get(trial_id_of(trial))
    return trial_detail(trial, spec=_spec(record), lease=lease, as_admin=as_admin)


def enqueue_trial(
    session: Session, storage: BaseStorage, *, record: StudyRecord, params: dict[str, Any]
) -> TrialDetail:
    """Queue a trial with these parameters (checked against the search space)."""
    if record.state in (StudyState.STOPPED, StudyState.COMPLETED):
        raise Conflict(f"the study is {record.state}: no new trials can run in it")
    spec = _spec(record)
    try:
        params = validate_params(spec, params)
    except SpecError as error:
        raise InvalidSpec(str(error), path=error.errors[0]["path"].split(".")) from None
    trial = optuna_store.enqueue_trial(storage, optuna_study_id=_optuna_id(record), params=params)
    return trial_detail(trial, spec=spec, lease=None)


def _leases(session: Session, trial_ids: list[int]) -> dict[int, Lease]:
    if not trial_ids:
        return {}
    rows = session.scalars(sa.select(Lease).where(Lease.trial_id.in_(trial_ids)))
    return {row.trial_id: row for row in rows}


def trial_public(trial: FrozenTrial, *, spec: StudySpec, lease: Lease | None = None) -> TrialPublic:
    return TrialPublic(**_common(trial, spec=spec, lease=lease))


def trial_detail(
    trial: FrozenTrial, *, spec: StudySpec, lease: Lease | None, as_admin: bool = False
) -> TrialDetail:
    reason = trial.user_attrs.get(ATTR_FAIL_REASON)
    detail = trial.system_attrs.get(ATTR_FAIL_DETAIL) if as_admin else None
    return TrialDetail(
        **_common(trial, spec=spec, lease=lease),
        intermediate_values={
            step: finite_or_none(v) for step, v in sorted(trial.intermediate_values.items())
        },
        user_attrs=_json_safe(trial.user_attrs),
        fail_reason=str(reason) if reason is not None else None,
        fail_detail=str(detail) if detail is not None else None,
    )


def _common(trial: FrozenTrial, *, spec: StudySpec, lease: Lease | None) -> dict[str, Any]:
    values = None
    if trial.values is not None:
        values = {
            metric: finite_or_none(v)
            for metric, v in zip(spec.metric_names, trial.values, strict=False)
        }
    duration = None
    if trial.datetime_start is not None and trial.datetime_complete is not None:
        duration = (trial.datetime_complete - trial.datetime_start).total_seconds()
    artifact = trial.user_attrs.get(ATTR_ARTIFACT)
    return {
        "trial_id": trial_id_of(trial),
        "number": trial.number,
        "state": trial.state.name.lower(),
        "params": trial_params(trial),
        "values": values,
        "datetime_start": trial.datetime_start,
        "datetime_complete": trial.datetime_complete,
        "duration_s": duration,
        "last_step": trial.last_step,
        "artifact": str(artifact) if artifact is not None else None,
        "lease": LeasePublic.model_validate(lease) if lease is not None else None,
    }


# Deeper than this, user attributes are shown as a note: attrs stored before the
# service limited their depth may nest hundreds of levels.
MAX_SHOWN_DEPTH = 16


def _json_safe(value: Any, depth: int = 0) -> Any:
    """User attributes may hold NaN or infinity, which JSON cannot carry: shown as null."""
    if isinstance(value, float):
        return finite_or_none(value)
    if isinstance(value, dict | list | tuple) and depth >= MAX_SHOWN_DEPTH:
        return f"(nested deeper than {MAX_SHOWN_DEPTH} levels: not shown)"
    if isinstance(value, dict):
        return {str(k): _json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v, depth + 1) for v in value]
    return value


def trial_params(trial: FrozenTrial) -> dict[str, Any]:
    """The parameters of a trial; for a waiting one, those it was enqueued with."""
    if trial.params:
        return dict(trial.params)
    return dict(trial.system_attrs.get("fixed_params") or {})


def objective_index(spec: StudySpec, metric: str) -> int:
    """Position of a metric among the spec's objectives (InvalidSpec for another name)."""
    try:
        return spec.metric_names.index(metric)
    except ValueError:
        raise InvalidSpec(
            "order_by must be number or one of this study's metrics: "
            + ", ".join(spec.metric_names),
            path=["query", "order_by"],
        ) from None


def finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN or infinity: such values are shown as null."""
    if value is None or not math.isfinite(value):
        return None
    return value
