"""Sampling a leased trial with one read of the study.

Optuna's `study.ask` reads the study's trials from the database up to three
times (the search space, the sampler's startup check, constant liar's view of
running trials), reads the new trial back, and writes constant liar's
relative parameters and then each parameter in transactions of their own.
The lease path already holds the study's locks and has just read the trials
to check the budget, so it samples on that one read instead:

- `SnapshotStorage`: Optuna's cached RDB storage, whose `get_all_trials`
  answers from a list of trials the caller provides while it samples a new
  trial in this thread (`sampling`). System attributes the sampler writes for
  that trial are collected and written by the caller in the same transaction
  as the parameters.
- `ObservationCachingTPE`: Optuna's TPE sampler, keeping each finished trial's
  parameters in the internal representation it models them in, so that an ask
  converts only trials it has not seen (finished trials never change).

Neither changes what is sampled: with the same seed and history the service
draws the same parameters as `study.ask` with Optuna's own TPESampler
(tests/service/test_sampling.py holds both to that).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Container, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

__all__ = ["ObservationCachingTPE", "SnapshotStorage", "sample_params"]


class _Sampling:
    """What one thread is sampling: the study, its trials, the new trial."""

    def __init__(self, study_id: int, trials: list[FrozenTrial], trial: FrozenTrial) -> None:
        self.study_id = study_id
        self.trials = trials
        self.trial_id = trial._trial_id
        self.system_attrs = trial.system_attrs
        self.written: dict[str, Any] = {}


class SnapshotStorage(optuna.storages._CachedStorage):
    """Optuna's cached storage over RDBStorage that a sampling thread can pin to one read."""

    def __init__(self, backend: optuna.storages.RDBStorage) -> None:
        super().__init__(backend)
        self._sampling = threading.local()

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


def sample_params(
    study: optuna.Study, trial: FrozenTrial, distributions: dict[str, BaseDistribution]
) -> None:
    """Fill a new trial's params with values for `distributions`, as `trial.suggest_*`
    would draw them: the sampler's relative sample where it covers a parameter, else
    an independent one."""
    sampler = study.sampler
    view = optuna.pruners._filter_study(study, trial)
    sampler.before_trial(view, trial)
    relative_space = sampler.infer_relative_search_space(view, trial)
    relative = sampler.sample_relative(view, trial, relative_space)
    for name, distribution in distributions.items():
        if distribution.single():
            value = optuna.distributions._get_single_value(distribution)
        elif name in relative and _covers(relative_space, relative, name, distribution):
            value = relative[name]
        else:
            value = sampler.sample_independent(view, trial, name, distribution)
        distribution.to_internal_repr(value)  # raises for a value outside the distribution
        trial.distributions[name] = distribution
        trial.params[name] = value


def _covers(
    space: dict[str, BaseDistribution], relative: dict[str, Any], name: str, dist: BaseDistribution
) -> bool:
    """Whether the relative sample's value for `name` stands for this distribution."""
    if name not in space:
        raise ValueError(f"{name} was sampled relatively but is not in the relative search space")
    optuna.distributions.check_distribution_compatibility(space[name], dist)
    return dist._contains(dist.to_internal_repr(relative[name]))
