"""The Optuna study behind each TuneFleet study: create, delete, load; counts, best
trials, pages of trials and enqueued trials.

Functions take the storage and keyword arguments; they raise `service.errors`
types for what a user can cause. On RDBStorage, counts and pages are computed
in SQL on Optuna's own tables (`trials`, `trial_values`) so that a summary or a
page does not load every trial of a study; any other storage gets the generic
(slower) path.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState, create_trial
from sqlalchemy.orm import Session, selectinload

from service._optuna_internals import (
    SnapshotStorage,
    TrialModel,
    TrialValueModel,
    frozen_trial_of_row,
    study_id_of,
)
from service.errors import Conflict, NotFound
from service.search import build_pruner, build_sampler
from tunefleet.spec import StudySpec

__all__ = [
    "SPEC_ATTR",
    "STUDY_ID_ATTR",
    "TRIAL_STATES",
    "TrialPage",
    "best_trials",
    "create_optuna_study",
    "delete_optuna_study",
    "enqueue_trial",
    "get_trial_by_number",
    "list_trials",
    "load_optuna_study",
    "trial_state_counts",
    "trial_state_totals",
]

log = logging.getLogger(__name__)

SPEC_ATTR = "tunefleet_spec"
STUDY_ID_ATTR = "tunefleet_study_id"
TRIAL_STATES = {state.name.lower(): state for state in TrialState}
"""Trial states as the API names them: running, waiting, complete, pruned, fail."""


def create_optuna_study(storage: BaseStorage, *, name: str, spec: StudySpec, study_key: int) -> int:
    """Create the Optuna study behind TuneFleet study `study_key`; returns its Optuna id.

    Directions and metric names (axis labels in optuna-dashboard) come from the
    objectives; the spec and our id are kept as study user attributes. A
    leftover study of the same name that TuneFleet made and no longer uses
    (a crash between the two commits) is replaced; any other one is a conflict.
    """
    try:
        study = optuna.create_study(storage=storage, study_name=name, directions=spec.directions)
    except optuna.exceptions.DuplicatedStudyError:
        _delete_leftover(storage, name=name)
        study = optuna.create_study(storage=storage, study_name=name, directions=spec.directions)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(spec.metric_names)
        study.set_user_attr(STUDY_ID_ATTR, study_key)
        study.set_user_attr(SPEC_ATTR, spec.model_dump(mode="json"))
    except Exception:
        delete_optuna_study(storage, optuna_study_id=study_id_of(study))
        raise
    return study_id_of(study)


def _delete_leftover(storage: BaseStorage, *, name: str) -> None:
    study_id = storage.get_study_id_from_name(name)
    if STUDY_ID_ATTR not in storage.get_study_user_attrs(study_id):
        raise Conflict(
            f"the Optuna storage already has a study named {name!r} that TuneFleet did not "
            "create; rename this study or remove that one"
        )
    log.warning("replacing leftover Optuna study %r", name)
    storage.delete_study(study_id)


def delete_optuna_study(storage: BaseStorage, *, optuna_study_id: int) -> None:
    """Delete an Optuna study and its trials; a study already gone is not an error."""
    with contextlib.suppress(KeyError):
        storage.delete_study(optuna_study_id)


def load_optuna_study(
    storage: BaseStorage,
    *,
    name: str,
    spec: StudySpec,
    study_key: int = 0,
    for_leases: bool = False,
) -> optuna.Study:
    """The Optuna study with the spec's sampler and pruner, ready for ask and tell.

    `for_leases`: the study the lease path samples on, over a `SnapshotStorage`
    (on RDBStorage) and with the lease path's sampler (service/_optuna_internals.py).
    With `warm_start.observe`, the sampler reads the past trials kept at creation as
    well (service/warm_observe.py).
    """
    study = optuna.load_study(
        study_name=name,
        storage=SnapshotStorage(storage)
        if for_leases and isinstance(storage, RDBStorage)
        else storage,
        sampler=build_sampler(spec, study_key=study_key, for_leases=for_leases),
        pruner=build_pruner(spec),
    )
    if spec.warm_start is not None and spec.warm_start.observe:
        # Imported here: warm start reads past studies through this module.
        from service.warm_observe import observing_sampler

        study.sampler = observing_sampler(
            study.sampler, storage, optuna_study_id=study_id_of(study), spec=spec
        )
    return study


def trial_state_counts(storage: BaseStorage, *, optuna_study_id: int) -> dict[str, int]:
    """How many trials the study has in each state (every state present, zeros included)."""
    counts = dict.fromkeys(TRIAL_STATES, 0)
    if isinstance(storage, RDBStorage):
        query = (
            sa.select(TrialModel.state, sa.func.count())
            .where(TrialModel.study_id == optuna_study_id)
            .group_by(TrialModel.state)
        )
        with storage.engine.connect() as conn:
            for state, n in conn.execute(query):
                counts[_state_name(state)] = n
        return counts
    for trial in storage.get_all_trials(optuna_study_id, deepcopy=False):
        counts[trial.state.name.lower()] += 1
    return counts


def trial_state_totals(storage: BaseStorage) -> dict[str, int]:
    """Trials per state over every study (for /metrics); RDBStorage only, else empty."""
    if not isinstance(storage, RDBStorage):
        return {}
    counts = dict.fromkeys(TRIAL_STATES, 0)
    query = sa.select(TrialModel.state, sa.func.count()).group_by(TrialModel.state)
    with storage.engine.connect() as conn:
        for state, n in conn.execute(query):
            counts[_state_name(state)] = n
    return counts


def _state_name(state: TrialState | str) -> str:
    return (state.name if isinstance(state, TrialState) else str(state)).lower()


def best_trials(storage: BaseStorage, *, optuna_study_id: int) -> list[FrozenTrial]:
    """The best trial of a one-objective study, or the Pareto front of a multi-objective
    one; empty before the first trial completes (or when the Optuna study is gone)."""
    try:
        directions = storage.get_study_directions(optuna_study_id)
    except KeyError:  # deleted outside TuneFleet, e.g. from the dashboard
        return []
    if len(directions) == 1:
        try:
            return [storage.get_best_trial(optuna_study_id)]
        except ValueError:  # no completed trial yet
            return []
    name = storage.get_study_name_from_id(optuna_study_id)
    study = optuna.Study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler())
    return sorted(study.best_trials, key=lambda t: t.number)


@dataclass
class TrialPage:
    trials: list[FrozenTrial]
    count: int  # all trials matching the filter, not only this page


def list_trials(
    storage: BaseStorage,
    *,
    optuna_study_id: int,
    states: Iterable[TrialState] | None = None,
    order_by: int | None = None,
    descending: bool = False,
    limit: int = 50,
    offset: int = 0,
    below_number: int | None = None,
) -> TrialPage:
    """A page of a study's trials, filtered by state (and numbered below `below_number`).

    Ordered by number, or by the value of objective `order_by` (trials without
    that value come last either way).
    """
    state_list = list(states) if states is not None else None
    if isinstance(storage, RDBStorage):
        return _list_trials_sql(
            storage, optuna_study_id, state_list, order_by, descending, limit, offset, below_number
        )
    trials = storage.get_all_trials(optuna_study_id, deepcopy=False, states=state_list)
    if below_number is not None:
        trials = [t for t in trials if t.number < below_number]
    if order_by is None:
        trials.sort(key=lambda t: t.number, reverse=descending)
    else:
        with_value = [t for t in trials if t.values and len(t.values) > order_by]
        without = [t for t in trials if not (t.values and len(t.values) > order_by)]
        with_value.sort(key=lambda t: (t.values[order_by], t.number), reverse=descending)
        trials = with_value + sorted(without, key=lambda t: t.number)
    return TrialPage(trials=trials[offset : offset + limit], count=len(trials))


def _list_trials_sql(
    storage: RDBStorage,
    study_id: int,
    states: list[TrialState] | None,
    order_by: int | None,
    descending: bool,
    limit: int,
    offset: int,
    below_number: int | None = None,
) -> TrialPage:
    T, V = TrialModel, TrialValueModel
    where = [T.study_id == study_id]
    if states is not None:
        where.append(T.state.in_(states))
    if below_number is not None:
        where.append(T.number < below_number)
    count_query = sa.select(sa.func.count()).select_from(T).where(*where)
    ids_query = sa.select(T.trial_id).where(*where)
    if order_by is None:
        ids_query = ids_query.order_by(T.number.desc() if descending else T.number)
    else:
        ids_query = ids_query.outerjoin(
            V, sa.and_(V.trial_id == T.trial_id, V.objective == order_by)
        )
        # -inf < finite values < +inf; a trial with no value sorts last.
        rank = sa.case(
            (V.value_type == V.TrialValueType.INF_NEG, -1),
            (V.value_type == V.TrialValueType.FINITE, 0),
            (V.value_type == V.TrialValueType.INF_POS, 1),
            else_=None,
        )
        if descending:
            ids_query = ids_query.order_by(
                rank.desc().nulls_last(), V.value.desc().nulls_last(), T.number
            )
        else:
            ids_query = ids_query.order_by(rank.nulls_last(), V.value.nulls_last(), T.number)
    ids_query = ids_query.limit(limit).offset(offset)
    with Session(storage.engine) as session:
        count = session.execute(count_query).scalar_one()
        ids = list(session.execute(ids_query).scalars())
        trials = _frozen_trials(storage, session, ids)
    return TrialPage(trials=trials, count=count)


def _frozen_trials(storage: RDBStorage, session: Session, ids: list[int]) -> list[FrozenTrial]:
    """Trials by id in the given order, in a handful of queries (as RDBStorage loads them)."""
    if not ids:
        return []
    T = TrialModel
    models = (
        session.query(T)
        .options(
            selectinload(T.params),
            selectinload(T.values),
            selectinload(T.user_attributes),
            selectinload(T.system_attributes),
            selectinload(T.intermediate_values),
        )
        .filter(T.trial_id.in_(ids))
        .all()
    )
    by_id = {m.trial_id: frozen_trial_of_row(storage, m) for m in models}
    return [by_id[i] for i in ids if i in by_id]


def get_trial_by_number(storage: BaseStorage, *, optuna_study_id: int, number: int) -> FrozenTrial:
    """Trial `number` of a study; NotFound when there is none."""
    try:
        trial_id = storage.get_trial_id_from_study_id_trial_number(optuna_study_id, number)
    except KeyError:
        raise NotFound(f"the study has no trial number {number}") from None
    return storage.get_trial(trial_id)


def enqueue_trial(
    storage: BaseStorage,
    *,
    optuna_study_id: int,
    params: dict[str, Any],
    user_attrs: dict[str, Any] | None = None,
) -> FrozenTrial:
    """Queue a trial with fixed parameters (validated by `tunefleet.spec.validate_params`);
    the next lease runs it, and the sampler fills the parameters left out."""
    template = create_trial(
        state=TrialState.WAITING,
        system_attrs={"fixed_params": params},
        user_attrs=user_attrs,
    )
    try:
        trial_id = storage.create_new_trial(optuna_study_id, template_trial=template)
    except KeyError:
        raise NotFound(
            "the Optuna study behind this study was deleted outside TuneFleet; "
            "delete this study and create it again"
        ) from None
    return storage.get_trial(trial_id)
