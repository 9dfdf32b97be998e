"""Studies: create, find, list, change state, delete. No HTTP here.

A study is a row of `tf_studies` (owner, spec, state) plus an Optuna study in
the same database that holds its trials. Our row is the source of truth: it
is written first and committed last on creation, deleted first on deletion,
so a crash in between leaves at most an unused Optuna study, which the next
creation of the same name replaces.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from optuna.storages import BaseStorage
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service import optuna_store, warm_observe, warm_start
from service.auth import Principal
from service.config import Settings
from service.errors import Conflict, InvalidSpec, NotFound
from service.models import StudyRecord, StudyState
from service.schemas import (
    ObjectivePublic,
    StudiesPublic,
    StudyAction,
    StudyDetail,
    StudyPublic,
    WarmStartPublic,
)
from service.search import check_server_support
from service.study_cache import forget_loaded_study
from service.trials import trial_public
from tunefleet._spec_sources import WEIGHT_SUFFIXES, weights_for
from tunefleet.roots import PathNotAllowed, resolve_under_roots
from tunefleet.spec import StudySpec

__all__ = [
    "change_study_state",
    "check_spec_paths",
    "create_study",
    "delete_study",
    "find_study",
    "find_study_by_name",
    "list_studies",
    "optuna_study_name",
    "study_detail",
    "study_public",
]

log = logging.getLogger(__name__)

# action -> (states it applies to, resulting state); the target state itself is a no-op.
TRANSITIONS: dict[str, tuple[tuple[StudyState, ...], StudyState]] = {
    "pause": ((StudyState.RUNNING,), StudyState.PAUSED),
    # A failed study resumes with its count of failed trials reset (the cause fixed).
    "resume": ((StudyState.PAUSED, StudyState.FAILED), StudyState.RUNNING),
    "stop": (
        (StudyState.RUNNING, StudyState.PAUSED, StudyState.COMPLETED, StudyState.FAILED),
        StudyState.STOPPED,
    ),
}


def optuna_study_name(*, owner: str, name: str) -> str:
    """The Optuna (and dashboard) name of a study: unique because names have no '/'."""
    return f"{owner}/{name}"


def check_spec_paths(spec: StudySpec, *, owner: str, settings: Settings) -> None:
    """Every file path of the spec lies under the owner's data or model roots.

    InvalidSpec (422) names the field and what the user wrote; it never says
    whether the path exists (the API may not even see the workers' disks).
    """
    data_scheme, _, data_rest = spec.dataset.partition(":")
    checks: list[tuple[list[str | int], str, list[str], str]] = []
    if data_scheme == "imagefolder":
        checks.append((["dataset"], data_rest, settings.data_roots, "TUNEFLEET_DATA_ROOTS"))
    # Every source model a trial may use (one, or the searched choices), and the weights
    # file of each; library weights (`pretrained`, a weights name) are not paths.
    for uri in spec.source_models():
        scheme, _, rest = uri.partition(":")
        if scheme == "file":
            checks.append((["source_model"], rest, settings.model_roots, "TUNEFLEET_MODEL_ROOTS"))
        weights = weights_for(spec.source_weights, uri)
        if weights is not None and weights.endswith(WEIGHT_SUFFIXES):
            where: list[str | int] = ["source_weights"]
            if isinstance(spec.source_weights, dict):
                where.append(uri)
            checks.append((where, weights, settings.model_roots, "TUNEFLEET_MODEL_ROOTS"))
    for path, written, roots, setting in filter(None, checks):
        try:
            resolve_under_roots(written, roots, owner=owner, field=str(path[0]), setting=setting)
        except PathNotAllowed as error:
            raise InvalidSpec(str(error), path=path) from None


def create_study(
    session: Session,
    storage: BaseStorage,
    *,
    owner: str,
    spec: StudySpec,
    settings: Settings | None = None,
) -> StudyDetail:
    """Create a study and its Optuna study; Conflict if the owner has one of that name.

    With ``settings``, the spec's file paths are checked against its roots first.
    """
    check_server_support(spec)
    if settings is not None:
        check_spec_paths(spec, owner=owner, settings=settings)
    sources = warm_start.resolve_sources(session, storage, owner=owner, spec=spec)
    # Our row is committed before Optuna writes and completed after, so no
    # transaction of ours holds a write lock while Optuna's engine writes
    # (SQLite, the demo's database, has a single writer). Until its Optuna study
    # exists the row is paused, which keeps the scheduler away from it.
    record = StudyRecord(
        owner=owner,
        name=spec.name,
        spec=spec.model_dump(mode="json"),
        state=StudyState.PAUSED,
        priority=spec.priority,
        optuna_study_name=optuna_study_name(owner=owner, name=spec.name),
    )
    session.add(record)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(
            f"you already have a study named {spec.name!r}: pick another name or delete it",
            path=["name"],
        ) from None
    try:
        record.optuna_study_id = optuna_store.create_optuna_study(
            storage, name=record.optuna_study_name, spec=spec, study_key=record.id
        )
        # Enqueued while the study is paused, so that the first leases take them.
        warm_start.enqueue_warm_start(
            storage, sources=sources, spec=spec, optuna_study_id=record.optuna_study_id
        )
        warm_observe.record_sources(
            storage, sources=sources, spec=spec, optuna_study_id=record.optuna_study_id
        )
    except Exception:
        session.rollback()
        session.delete(record)
        session.commit()
        raise
    record.state = StudyState.RUNNING
    session.commit()
    return study_detail(session, storage, record=record)


def find_study(session: Session, *, principal: Principal, study_id: int) -> StudyRecord:
    """The study with this id if the principal may see it (admin: any); NotFound otherwise."""
    record = session.get(StudyRecord, study_id)
    if record is None or not (principal.is_admin or record.owner == principal.owner):
        raise NotFound(f"no study with id {study_id}")
    return record


def find_study_by_name(
    session: Session, *, principal: Principal, name: str, owner: str | None = None
) -> StudyRecord:
    """The principal's study of this name (an admin may name another owner)."""
    owner = owner if owner is not None and principal.is_admin else principal.owner
    record = session.scalars(
        sa.select(StudyRecord).where(StudyRecord.owner == owner, StudyRecord.name == name)
    ).first()
    if record is None:
        raise NotFound(f"no study named {name!r} for owner {owner!r}")
    return record


def list_studies(
    session: Session,
    *,
    principal: Principal,
    state: StudyState | None = None,
    limit: int = 50,
    offset: int = 0,
) -> StudiesPublic:
    """A page of the studies the principal may see, newest first."""
    where = []
    if not principal.is_admin:
        where.append(StudyRecord.owner == principal.owner)
    if state is not None:
        where.append(StudyRecord.state == state)
    count = session.scalar(sa.select(sa.func.count()).select_from(StudyRecord).where(*where))
    rows = session.scalars(
        sa.select(StudyRecord)
        .where(*where)
        .order_by(StudyRecord.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return StudiesPublic(data=[study_public(r) for r in rows], count=count or 0)


def change_study_state(
    session: Session, *, principal: Principal, study_id: int, action: StudyAction
) -> StudyPublic:
    """pause, resume or stop; repeating an action is harmless, an impossible one a Conflict."""
    find_study(session, principal=principal, study_id=study_id)
    # Lock the row: the scheduler may be completing the study at the same time.
    record = session.scalars(
        sa.select(StudyRecord)
        .where(StudyRecord.id == study_id)
        .with_for_update()
        .execution_options(populate_existing=True)  # the state as of the lock, not before
    ).one()
    allowed_from, target = TRANSITIONS[action]
    if record.state != target:
        if record.state not in allowed_from:
            hint = (
                "; create a new study to search again" if record.state == StudyState.STOPPED else ""
            )
            raise Conflict(f"cannot {action} a study that is {record.state}{hint}")
        if record.state == StudyState.FAILED:
            record.failed_trials = 0
            record.last_failure = None
        record.state = target
        session.flush()
    return study_public(record)


def delete_study(
    session: Session, storage: BaseStorage, *, principal: Principal, study_id: int
) -> None:
    """Delete a study, its leases and its Optuna study with every trial."""
    record = find_study(session, principal=principal, study_id=study_id)
    optuna_id = record.optuna_study_id
    session.delete(record)
    session.commit()
    forget_loaded_study(study_id)
    if optuna_id is not None:
        try:
            optuna_store.delete_optuna_study(storage, optuna_study_id=optuna_id)
        except Exception:
            # Our row is gone; an unused Optuna study is replaced on the next create.
            log.exception("could not delete Optuna study %s", optuna_id)


def study_public(record: StudyRecord) -> StudyPublic:
    return StudyPublic(
        id=record.id,
        name=record.name,
        owner=record.owner,
        state=record.state,
        failed_trials=record.failed_trials,
        fail_reason=record.last_failure if record.state == StudyState.FAILED else None,
        priority=record.priority,
        objectives=[ObjectivePublic(**o) for o in record.spec.get("objectives", [])],
        optuna_study_name=record.optuna_study_name,
        created_at=record.created_at,
        updated_at=record.updated_at,
    )


def study_spec(record: StudyRecord) -> StudySpec:
    return StudySpec.model_validate(record.spec)


def study_detail(session: Session, storage: BaseStorage, *, record: StudyRecord) -> StudyDetail:
    """Spec, state, trial counts per state and the best trial or Pareto front."""
    spec = study_spec(record)
    counts = dict.fromkeys(optuna_store.TRIAL_STATES, 0)
    best = []
    observed = None
    if record.optuna_study_id is not None:
        counts = optuna_store.trial_state_counts(storage, optuna_study_id=record.optuna_study_id)
        best = optuna_store.best_trials(storage, optuna_study_id=record.optuna_study_id)
        if spec.warm_start is not None and spec.warm_start.observe:
            sources, n = warm_observe.recorded(storage, optuna_study_id=record.optuna_study_id)
            observed = WarmStartPublic(observations=n, sources=[s.name for s in sources])
    return StudyDetail(
        **study_public(record).model_dump(),
        spec=spec,
        trial_counts=counts,
        best_trials=[trial_public(t, spec=spec) for t in best],
        warm_start=observed,
    )
