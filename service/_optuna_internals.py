"""Every private Optuna name the service relies on, behind names of our own.

Optuna's public API covers ask and tell; the lease path's speed (one read of
the study per ask, one transaction per write) and the SQL on Optuna's own
tables need a few of its internals. They are used here and nowhere else in
`service/`: tests/service/test_optuna_internals.py checks each one and names
the Optuna symbol that changed, and checks that no other module reaches into
Optuna. pyproject.toml pins Optuna to the minor version those tests (and the
sampler-equivalence test, tests/service/test_sampling.py) pass on.

- `SnapshotStorage`: Optuna's cached RDB storage, whose `get_all_trials`
  answers from a list of trials the caller provides while it samples a new
  trial in this thread (`sampling`). System attributes the sampler writes for
  that trial are collected and written by the caller in the same transaction
  as the parameters.
- `ObservationCachingTPE`: Optuna's TPE sampler, keeping each finished trial's
  parameters in the internal representation it models them in, so that an ask
  converts only trials it has not seen (finished trials never change).
- `study_with_observations`: the study as a sampler sees it with past trials
  added: samplers read a study's trials through its private `_get_trials`.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Container, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import numpy as np
import optuna
import sqlalchemy as sa
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage, RDBStorage, _CachedStorage
from optuna.storages._rdb import models as _rdb
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.orm import Session

# Optuna's tables, as the SQLAlchemy models of its RDB storage declare them.
StudyModel = _rdb.StudyModel
TrialModel = _rdb.TrialModel
TrialValueModel = _rdb.TrialValueModel
TrialParamModel = _rdb.TrialParamModel
TrialUserAttributeModel = _rdb.TrialUserAttributeModel
TrialSystemAttributeModel = _rdb.TrialSystemAttributeModel


# Studies and trials ------------------------------------------------------------


def trial_id_of(trial: FrozenTrial | optuna.Trial) -> int:
    """Optuna's id of a trial (unique in the storage; the worker protocol's trial id)."""
    return trial._trial_id


def study_id_of(study: optuna.Study) -> int:
    """Optuna's id of a study in its storage."""
    return study._study_id


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage a Study object reads and writes through."""
    return study._storage


def asked_trial(trial: optuna.Trial) -> FrozenTrial:
    """What `study.ask` wrote (id, number, parameters), without reading it back."""
    return trial._cached_frozen_trial


def forget_cached_trials(study: optuna.Study) -> None:
    """Drop the trials a Study object cached for this thread (after a trial was created
    behind its back)."""
    study._thread_local.cached_all_trials = None


# Storages ------------------------------------------------------------------------


def uncached(storage: BaseStorage) -> BaseStorage:
    """The storage behind Optuna's cache: what our own queries and transactions use."""
    if isinstance(storage, _CachedStorage):
        return storage._backend
    return storage


@contextmanager
def rdb_session(storage: RDBStorage, *, ignore_integrity_error: bool = False) -> Iterator[Session]:
    """A session of Optuna's engine that commits on success, translating database
    errors as Optuna's storage does."""
    with _create_scoped_session(storage.scoped_session, ignore_integrity_error) as session:
        yield session


def lock_trial_row(session: Session, trial_id: int) -> Any:
    """The trial's row, locked for update; KeyError when there is none."""
    return TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)


def stored_value(value: float) -> tuple[float | None, Any]:
    """An objective value as Optuna's `trial_values` table keeps it: (value, kind)."""
    return TrialValueModel.value_to_stored_repr(value)


def frozen_trial_of_row(storage: RDBStorage, row: Any) -> FrozenTrial:
    """A FrozenTrial from a `TrialModel` row loaded with its relations."""
    return storage._build_frozen_trial_from_trial_model(row)


def create_trial_row(storage: RDBStorage, study_id: int) -> FrozenTrial:
    """A new RUNNING trial with no parameters, returned as created (not read back)."""
    return storage._create_new_trial(study_id)


def insert_trial_row(session: Session, study_id: int) -> FrozenTrial:
    """A new RUNNING trial with no parameters, written (not committed) in `session`:
    what `RDBStorage._create_new_trial` does, in the caller's transaction. The
    study's row is locked first, as Optuna does, so the trial's number is unique."""
    StudyModel.find_or_raise_by_id(study_id, session, for_update=True)
    row = TrialModel(
        study_id=study_id, number=None, state=TrialState.RUNNING, datetime_start=datetime.now()
    )
    session.add(row)
    session.flush()
    row.number = row.count_past_trials(session)
    session.flush()
    return FrozenTrial(
        number=row.number,
        state=TrialState.RUNNING,
        value=None,
        values=None,
        datetime_start=row.datetime_start,
        datetime_complete=None,
        params={},
        distributions={},
        user_attrs={},
        system_attrs={},
        intermediate_values={},
        trial_id=row.trial_id,
    )


def claim_waiting_row(
    session: Session, study_id: int, prefer: Sequence[int] = ()
) -> tuple[int, datetime] | None:
    """The study's first WAITING trial set RUNNING in `session` (not committed):
    (its id, its start), or None. Those of `prefer` (trial ids) that are still
    WAITING go first, oldest first. Rows another transaction holds are skipped, so
    two claims never get one trial (Optuna's `_pop_waiting_trial_id`, in the
    caller's transaction)."""
    waiting = (
        sa.select(TrialModel)
        .where(TrialModel.study_id == study_id, TrialModel.state == TrialState.WAITING)
        .order_by(TrialModel.trial_id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    row = None
    if prefer:
        row = session.scalars(waiting.where(TrialModel.trial_id.in_(list(prefer)))).first()
    if row is None:
        row = session.scalars(waiting).first()
    if row is None:
        return None
    row.state = TrialState.RUNNING
    row.datetime_start = datetime.now()
    session.flush()
    return row.trial_id, row.datetime_start


def set_trial_attr_in_session(
    storage: RDBStorage, session: Session, model: type, trial_id: int, key: str, value: Any
) -> None:
    """Insert or update one trial attribute (user or system `model`) within `session`."""
    storage._set_trial_attr_without_commit(session, model, trial_id, key, value)


# Sampling ------------------------------------------------------------------------


def study_view_for(study: optuna.Study, trial: FrozenTrial) -> optuna.Study:
    """The study as samplers see it while `trial` is being sampled (as `Trial` gives it)."""
    return optuna.pruners._filter_study(study, trial)


def single_value(distribution: BaseDistribution) -> Any:
    """The only value of a distribution whose `single()` is true."""
    return optuna.distributions._get_single_value(distribution)


def distribution_contains(distribution: BaseDistribution, internal_value: float) -> bool:
    """Whether a value in internal representation lies in the distribution."""
    return distribution._contains(internal_value)


class _ObservedStudy:
    """A study whose trial reads start with fixed observations; all else is the study's."""

    def __init__(self, study: optuna.Study, observations: list[FrozenTrial]) -> None:
        self._observed_study = study
        self._observations = observations

    def __getattr__(self, name: str) -> Any:
        return getattr(self._observed_study, name)

    def _observed(self, states: Container[TrialState] | None) -> list[FrozenTrial]:
        if states is None:
            return list(self._observations)
        return [t for t in self._observations if t.state in states]

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        study = self._observed_study
        own = study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        past = self._observed(states)
        return [*(copy.deepcopy(past) if deepcopy else past), *own]

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        own = self._observed_study.get_trials(deepcopy=deepcopy, states=states)
        past = self._observed(states)
        return [*(copy.deepcopy(past) if deepcopy else past), *own]

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


def study_with_observations(study: optuna.Study, observations: list[FrozenTrial]) -> optuna.Study:
    """`study` as a sampler reads it, with `observations` (finished trials numbered below
    0, never stored) before its own trials; every other attribute is the study's own."""
    if not observations:
        return study
    return _ObservedStudy(study, observations)  # type: ignore[return-value]


class _Sampling:
    """What one thread is sampling: the study, its trials, the new trial."""

    def __init__(self, study_id: int, trials: list[FrozenTrial], trial: FrozenTrial) -> None:
        self.study_id = study_id
        self.trials = trials
        self.trial_id = trial._trial_id
        self.system_attrs = trial.system_attrs
        self.written: dict[str, Any] = {}


class SnapshotStorage(_CachedStorage):
    """Optuna's cached storage over RDBStorage that a sampling thread can pin to one read."""

    def __init__(self, backend: RDBStorage) -> None:
        super().__init__(backend)
        self._sampling = threading.local()

    @property
    def backend(self) -> RDBStorage:
        """The RDBStorage behind the cache."""
        return self._backend

    def _current(self, study_id: int) -> _Sampling | None:
        current = getattr(self._sampling, "current", None)
        return current if current is not None and current.study_id == study_id else None

    @contextmanager
    def sampling(
        self, study_id: int, trials: list[FrozenTrial], trial: FrozenTrial
    ) -> Iterator[dict[str, Any]]:
        """Within: this thread's reads of the study's trials return `trials`, and the
        system attributes samplers set on `trial` (a new one, in `trials`) go into its
        `system_attrs`, where samplers read them back (the grid sampler's grid point),
        and not to the database: the dict yielded holds those set, for the caller to
        write with the trial's parameters."""
        state = _Sampling(study_id, trials, trial)
        self._sampling.current = state
        try:
            yield state.written
        finally:
            self._sampling.current = None

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        current = self._current(study_id)
        if current is None:
            return super().get_all_trials(study_id, deepcopy=deepcopy, states=states)
        trials = current.trials
        if states is not None:
            trials = [t for t in trials if t.state in states]
        return copy.deepcopy(trials) if deepcopy else list(trials)

    def cached_trial_count(self, study_id: int) -> int:
        """How many of the study's trials this cache holds (`_StudyInfo.trials`)."""
        with self._lock:
            info = self._studies.get(study_id)
            return len(info.trials) if info is not None else 0

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        current = getattr(self._sampling, "current", None)
        if current is not None and current.trial_id == trial_id:
            current.system_attrs[key] = value
            current.written[key] = value
            return
        super().set_trial_system_attr(trial_id, key, value)


class ObservationCachingTPE(optuna.samplers.TPESampler):
    """TPESampler that converts each finished trial's parameters once.

    TPE builds its two Parzen estimators from every finished trial's parameters
    in internal representation, converting them on every ask: at 2000 trials
    that is most of the sampler's own time. A finished trial's parameters never
    change, so their conversion is kept per search space and trial id.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._observations: dict[tuple, dict[int, tuple | None]] = {}
        self._observations_lock = threading.Lock()

    def _get_internal_repr(
        self, trials: list[FrozenTrial], search_space: dict[str, BaseDistribution], study
    ) -> dict[str, np.ndarray]:
        key = tuple(search_space.items())
        with self._observations_lock:
            seen = self._observations.setdefault(key, {})
        rows: list[tuple] = []
        for trial in trials:
            finished = trial.state.is_finished()
            row = seen.get(trial._trial_id, False) if finished else False
            if row is False:
                params = self._get_params(trial, study)
                row = None
                if search_space.keys() <= params.keys():
                    row = tuple(d.to_internal_repr(params[n]) for n, d in search_space.items())
                if finished:
                    seen[trial._trial_id] = row
            if row is not None:
                rows.append(row)
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in search_space]
        return {
            name: np.asarray(column) for name, column in zip(search_space, columns, strict=True)
        }
