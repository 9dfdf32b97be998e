"""The lease path's trial lifecycle in Optuna: ask, report, prune, tell, fail, re-queue.

Every call into Optuna for a leased trial goes through these functions
(service/leasing.py, service/budget.py and service/reaper.py call them).
Writes on RDBStorage go in one transaction each: a new trial's parameters with
the sampler's system attributes; a finished trial's attributes, values and
state.
"""

from __future__ import annotations

import contextlib
import json
import math
from datetime import datetime
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState, create_trial
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from service._optuna_internals import (
    SnapshotStorage,
    TrialParamModel,
    TrialSystemAttributeModel,
    TrialUserAttributeModel,
    TrialValueModel,
    asked_trial,
    create_trial_row,
    forget_cached_trials,
    lock_trial_row,
    rdb_session,
    set_trial_attr_in_session,
    stored_value,
    trial_id_of,
    uncached,
)
from service.errors import Conflict
from service.sampling import sample_params
from service.study_cache import LoadedStudy

__all__ = [
    "ATTR_ARTIFACT",
    "ATTR_DEVICE",
    "ATTR_FAIL_DETAIL",
    "ATTR_FAIL_REASON",
    "ATTR_PROGRESS",
    "ATTR_RETRIED_AS",
    "ATTR_RETRY_COUNT",
    "ATTR_RETRY_OF",
    "ATTR_WORKER_ID",
    "RESERVED_TRIAL_ATTRS",
    "ask_leased_trial",
    "complete_leased_trial",
    "fail_leased_trial",
    "get_frozen_trial",
    "orphaned_running_trials",
    "record_intermediate",
    "retry_count_of",
    "set_trial_progress",
]

# Trial user attributes the service writes; a worker's attrs cannot overwrite them.
ATTR_WORKER_ID = "worker_id"
ATTR_DEVICE = "device"
ATTR_PROGRESS = "progress"
ATTR_FAIL_REASON = "fail_reason"
ATTR_FAIL_DETAIL = "tunefleet:fail_detail"  # a system attribute: admins only
ATTR_RETRY_OF = "retry_of"
ATTR_RETRY_COUNT = "retry_count"
ATTR_RETRIED_AS = "retried_as"
ATTR_ARTIFACT = "artifact"
RESERVED_TRIAL_ATTRS = frozenset(
    {
        ATTR_WORKER_ID,
        ATTR_DEVICE,
        ATTR_PROGRESS,
        ATTR_FAIL_REASON,
        ATTR_RETRY_OF,
        ATTR_RETRY_COUNT,
        ATTR_RETRIED_AS,
        ATTR_ARTIFACT,
    }
)


def ask_leased_trial(entry: LoadedStudy, trials: list[FrozenTrial]) -> FrozenTrial:
    """Start a trial: a WAITING one (enqueued or re-queued) first, else a sampled one.

    `trials` is the study as `entry.trials()` read it just before, under the
    study's locks. Who runs the trial is on its lease; the worker id and device
    go into the trial's user attributes when it finishes.
    """
    with entry.lock:
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if waiting or not isinstance(entry.storage, SnapshotStorage):
            trial = entry.study.ask(fixed_distributions=entry.distributions)
            # The Trial holds what ask wrote (id, number, params): no need to read it back.
            return asked_trial(trial)
        return _ask_new_trial(entry, trials)


def _ask_new_trial(entry: LoadedStudy, trials: list[FrozenTrial]) -> FrozenTrial:
    """study.ask(fixed_distributions) for a new trial, sampled on `trials` (plus the new
    trial, as ask sees it), with its parameters and the sampler's system attributes
    written in one transaction."""
    study, storage, study_id = entry.study, entry.storage, entry.optuna_study_id
    backend = storage.backend
    frozen = create_trial_row(backend, study_id)  # the new trial, not read back
    forget_cached_trials(study)
    with storage.sampling(study_id, [*trials, frozen], frozen) as system_attrs:
        sample_params(study, frozen, entry.distributions)
    # The trial was created just now under the study's locks and is RUNNING with
    # no parameters or attributes: plain inserts, in one transaction.
    with rdb_session(backend, ignore_integrity_error=True) as session:
        session.add_all(
            TrialParamModel(
                trial_id=trial_id_of(frozen),
                param_name=name,
                param_value=distribution.to_internal_repr(frozen.params[name]),
                distribution_json=optuna.distributions.distribution_to_json(distribution),
            )
            for name, distribution in frozen.distributions.items()
        )
        session.add_all(
            TrialSystemAttributeModel(
                trial_id=trial_id_of(frozen), key=key, value_json=json.dumps(value)
            )
            for key, value in system_attrs.items()
        )
    return frozen


def _upsert_trial_attrs(
    session: Session, backend: RDBStorage, model: type, trial_id: int, attrs: dict[str, Any]
) -> None:
    """Set several attributes of a trial in one statement (insert or update each key)."""
    if not attrs:
        return
    dialect = backend.engine.name
    if dialect not in ("postgresql", "sqlite"):
        for key, value in attrs.items():
            set_trial_attr_in_session(backend, session, model, trial_id, key, value)
        return
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    statement = insert(model).values(
        [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()]
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[model.trial_id, model.key],
            set_={"value_json": statement.excluded.value_json},
        )
    )


def _finish_trial(
    storage: BaseStorage,
    trial_id: int,
    *,
    state: TrialState,
    values: list[float] | None = None,
    user_attrs: dict[str, Any],
) -> None:
    """User attributes, values and the final state in one transaction: one commit
    instead of one per attribute, and a retried call never finds half a result.

    Raises UpdateFinishedTrialError when the trial already finished.
    """
    backend = uncached(storage)
    if not isinstance(backend, RDBStorage):
        for key, value in user_attrs.items():
            storage.set_trial_user_attr(trial_id, key, value)
        storage.set_trial_state_values(trial_id, state, values)
        return
    with rdb_session(backend) as session:
        trial = lock_trial_row(session, trial_id)
        backend.check_trial_is_updatable(trial_id, trial.state)
        _upsert_trial_attrs(session, backend, TrialUserAttributeModel, trial_id, user_attrs)
        # A running trial has no values yet (they are written with its final state).
        for objective, value in enumerate(values or ()):
            stored, kind = stored_value(value)
            session.add(
                TrialValueModel(
                    trial_id=trial_id, objective=objective, value=stored, value_type=kind
                )
            )
        trial.state = state
        trial.datetime_complete = datetime.now()


def get_frozen_trial(storage: BaseStorage, trial_id: int) -> FrozenTrial:
    return storage.get_trial(trial_id)


def set_trial_progress(storage: BaseStorage, trial_id: int, progress: dict) -> None:
    """Show how far a running trial got; a trial that finished meanwhile keeps its last."""
    with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
        storage.set_trial_user_attr(trial_id, ATTR_PROGRESS, progress)


def _same_float(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def record_intermediate(entry: LoadedStudy, *, trial_id: int, step: int, value: float) -> bool:
    """Record a validation value and ask the pruner; True when the trial is now PRUNED.

    The same step with the same value again changes nothing; with another value
    it is a Conflict. Multi-objective studies record the value and never prune
    (Optuna cannot prune them).
    """
    with entry.lock:
        trial = entry.storage.get_trial(trial_id)
        recorded = trial.intermediate_values.get(step)
        if recorded is not None and not _same_float(recorded, value):
            raise Conflict(
                f"trial {trial.number} already has {recorded} at step {step}, not {value}; "
                "intermediate values cannot be changed"
            )
        if trial.state == TrialState.PRUNED:
            return True
        if trial.state != TrialState.RUNNING:
            raise Conflict(f"trial {trial.number} is {trial.state.name}, not running")
        if recorded is None:
            entry.storage.set_trial_intermediate_value(trial_id, step, value)
        if len(entry.study.directions) > 1:
            return False
        trial = entry.storage.get_trial(trial_id)
        if not entry.study.pruner.prune(entry.study, trial):
            return False
        entry.study.tell(trial.number, state=TrialState.PRUNED, skip_if_finished=True)
        return True


def complete_leased_trial(
    entry: LoadedStudy,
    *,
    trial_id: int,
    values: list[float],
    attrs: dict,
    artifact: str | None,
    worker: dict[str, str],
) -> None:
    """Tell the values with the worker's attrs; a retry of a tell that went through is accepted."""
    storage = entry.storage
    user_attrs = {k: v for k, v in attrs.items() if k not in RESERVED_TRIAL_ATTRS}
    user_attrs |= worker
    if artifact is not None:
        user_attrs[ATTR_ARTIFACT] = artifact
    try:
        # _finish_trial checks the state under the trial's row lock: no read before.
        _finish_trial(
            storage, trial_id, state=TrialState.COMPLETE, values=values, user_attrs=user_attrs
        )
        return
    except optuna.exceptions.UpdateFinishedTrialError:
        trial = storage.get_trial(trial_id)  # finished before: a retried tell, the reaper
    if (
        trial.state != TrialState.COMPLETE
        or trial.values is None
        or not all(_same_float(a, b) for a, b in zip(trial.values, values, strict=True))
    ):
        raise Conflict(
            f"trial {trial.number} is already {trial.state.name}"
            + (f" with values {trial.values}" if trial.values else "")
        )


def fail_leased_trial(
    storage: BaseStorage,
    *,
    trial_id: int,
    optuna_study_id: int,
    reason: str,
    requeue: bool = False,
    worker: dict[str, str] | None = None,
    detail: str | None = None,
) -> tuple[FrozenTrial, FrozenTrial | None]:
    """Mark a running trial FAIL with the reason as a user attribute, and with
    ``requeue`` queue a WAITING trial with its parameters first. ``detail`` (the
    worker's full account, for admins only) is kept as a system attribute, which
    the owner's views never show.

    Returns the trial and its retry. A trial already finished is left as it is
    (with the retry it named, if any): failing twice re-queues once.
    """
    trial = storage.get_trial(trial_id)
    if trial.state != TrialState.RUNNING:
        return trial, _retry_of(storage, trial, optuna_study_id)
    retry = None
    user_attrs = {ATTR_FAIL_REASON: reason, **(worker or {})}
    if detail:
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            storage.set_trial_system_attr(trial_id, ATTR_FAIL_DETAIL, detail)
    if requeue:
        retry = _queue_retry(storage, failed=trial, study_id=optuna_study_id)
        # Lineage both ways; a finished trial's attributes cannot change, so now.
        user_attrs[ATTR_RETRIED_AS] = retry.number
    with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
        _finish_trial(storage, trial_id, state=TrialState.FAIL, user_attrs=user_attrs)
    return storage.get_trial(trial_id), retry


def _retry_of(storage: BaseStorage, trial: FrozenTrial, study_id: int) -> FrozenTrial | None:
    number = trial.user_attrs.get(ATTR_RETRIED_AS)
    if number is None:
        return None
    return storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study_id, number))


def _queue_retry(storage: BaseStorage, *, failed: FrozenTrial, study_id: int) -> FrozenTrial:
    """A WAITING trial with the failed one's parameters and its lineage in user attrs."""
    template = create_trial(
        state=TrialState.WAITING,
        system_attrs={"fixed_params": dict(failed.params)},
        user_attrs={
            ATTR_RETRY_OF: failed.number,
            ATTR_RETRY_COUNT: retry_count_of(failed) + 1,
        },
    )
    return storage.get_trial(storage.create_new_trial(study_id, template_trial=template))


def retry_count_of(trial: FrozenTrial) -> int:
    return int(trial.user_attrs.get(ATTR_RETRY_COUNT, 0))


def orphaned_running_trials(
    session: Session, *, started_before: datetime
) -> list[tuple[int, int, int]]:
    """(TuneFleet study id, trial id, number) of RUNNING trials that have no lease row."""
    # Optuna writes datetime_start as naive local time.
    cutoff = started_before.astimezone().replace(tzinfo=None)
    rows = session.execute(
        sa.text(
            "SELECT s.id, t.trial_id, t.number FROM trials t "
            "JOIN studies os ON os.study_id = t.study_id "
            "JOIN tf_studies s ON s.optuna_study_name = os.study_name "
            "LEFT JOIN tf_leases l ON l.trial_id = t.trial_id "
            "WHERE t.state = 'RUNNING' AND l.trial_id IS NULL AND t.datetime_start < :cutoff"
        ),
        {"cutoff": cutoff},
    ).all()
    return [(row[0], row[1], row[2]) for row in rows]
