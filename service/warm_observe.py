"""Warm start's second half: past studies' completed trials as the sampler's observations.

With `warm_start.observe`, the sampler of a new study reads, before the study's
own trials, the completed trials of the past studies its warm start resolved at
creation (up to TRIALS_READ_PER_STUDY each), projected onto the new search space
with `project_trial` and valued on the new study's objectives. TPE (or GP) then
models them from its first ask instead of sampling its random startup trials.

They are FrozenTrials numbered below 0 that exist only in what the sampler reads
(`ObservingSampler`), never in the database: budget counts, trial lists, the
best trial or Pareto front and the dashboard see only the study's own trials.

What is kept is where they come from: at creation, the sources and the number
of trials each had then, in a user attribute of the new Optuna study
(`OBSERVE_ATTR`). Every load of the study (another API process, a restart, the
loaded-study cache) rebuilds the same observations from them, without resolving
`auto` again; a source deleted since gives none.

A past trial whose projection lacks a parameter of the new space is left out:
TPE's multivariate model and GP model the intersection of the trials' search
spaces, which one partial trial would shrink to the parameters it has.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from service._optuna_internals import study_with_observations
from service.models import StudyRecord
from service.optuna_store import trial_state_counts
from service.search import distributions
from service.warm_start import (
    WARM_START_ATTR,
    completed_trials,
    objective_values,
    project_params,
    project_trial,
)
from tunefleet.spec import StudySpec, spec_backbones

__all__ = [
    "OBSERVE_ATTR",
    "ObservedSource",
    "ObservingSampler",
    "observation_trials",
    "observations",
    "observing_sampler",
    "record_sources",
    "recorded",
]

log = logging.getLogger(__name__)

OBSERVE_ATTR = "tunefleet_warm_observe"
"""The new Optuna study's user attribute: {"sources": [...], "observations": count}."""


@dataclass
class ObservedSource:
    """A past study whose completed trials the sampler observes, as resolved at creation."""

    name: str
    optuna_study_id: int
    objectives: list[dict[str, Any]]  # its spec's objectives: which value is which metric
    trials_before: int  # its trial count at creation: later trials are not observed
    # The backbones its trials ran on (tunefleet.spec.spec_backbones); None in a record kept
    # before backbones were: its trials are then projected by their parameters alone.
    backbones: dict[str, Any] | None = None

    @classmethod
    def of(cls, storage: BaseStorage, record: StudyRecord) -> ObservedSource:
        assert record.optuna_study_id is not None
        counts = trial_state_counts(storage, optuna_study_id=record.optuna_study_id)
        return cls(
            name=record.name,
            optuna_study_id=record.optuna_study_id,
            objectives=list(record.spec.get("objectives", [])),
            trials_before=sum(counts.values()),
            backbones=spec_backbones(record.spec),
        )


def record_sources(
    storage: BaseStorage, *, sources: list[StudyRecord], spec: StudySpec, optuna_study_id: int
) -> int:
    """At creation: keep the sources with the new study; returns how many observations
    they give (0, and nothing kept, when the spec does not observe)."""
    if spec.warm_start is None or not spec.warm_start.observe:
        return 0
    kept = [ObservedSource.of(storage, record) for record in sources]
    count = len(observations(storage, sources=kept, spec=spec))
    storage.set_study_user_attr(
        optuna_study_id,
        OBSERVE_ATTR,
        {"sources": [asdict(source) for source in kept], "observations": count},
    )
    return count


def recorded(storage: BaseStorage, *, optuna_study_id: int) -> tuple[list[ObservedSource], int]:
    """The sources kept at creation and how many observations they gave then."""
    try:
        kept = storage.get_study_user_attrs(optuna_study_id).get(OBSERVE_ATTR) or {}
    except KeyError:  # the Optuna study was deleted outside TuneFleet
        return [], 0
    sources = [ObservedSource(**source) for source in kept.get("sources", [])]
    return sources, int(kept.get("observations", 0))


def observations(
    storage: BaseStorage, *, sources: Sequence[ObservedSource], spec: StudySpec
) -> list[FrozenTrial]:
    """The sources' completed trials as observations of `spec`'s study, in source order
    and then by trial number; each names its origin (`warm_start_from: study/number`)."""
    space = set(spec.search_space)
    runs_on = spec_backbones(spec.model_dump(mode="json"))
    found: list[tuple[dict[str, Any], tuple[float, ...], str]] = []
    for source in sources:
        try:
            trials = completed_trials(
                storage,
                optuna_study_id=source.optuna_study_id,
                objectives=source.objectives,
                below_number=source.trials_before,
            )
        except KeyError:
            log.warning("warm start source %r is gone: nothing to observe", source.name)
            continue
        metrics = [o.get("metric") for o in source.objectives]
        for trial in sorted(trials, key=lambda t: t.number):
            values = objective_values(trial, metrics=metrics, spec=spec)
            if source.backbones is None:
                params: dict[str, Any] | None = project_params(trial.params, spec=spec)
            else:
                params = project_trial(
                    trial.params, ran_on=source.backbones, spec=spec, runs_on=runs_on
                )
            if values is not None and params is not None and params.keys() == space:
                found.append((params, values, f"{source.name}/{trial.number}"))
    return observation_trials(found, space=distributions(spec))


def observation_trials(
    found: Sequence[tuple[dict[str, Any], Sequence[float], str]],
    *,
    space: dict[str, BaseDistribution],
) -> list[FrozenTrial]:
    """Completed FrozenTrials of (params, values, origin), numbered (and with ids) -N..-1,
    so that they sort before the study's own trials and never share an id with one."""
    now = datetime.now()
    n = len(found)
    return [
        FrozenTrial(
            number=i - n,
            trial_id=i - n,
            state=TrialState.COMPLETE,
            value=None,
            values=[float(v) for v in values],
            datetime_start=now,
            datetime_complete=now,
            params=dict(params),
            distributions={name: space[name] for name in params},
            user_attrs={WARM_START_ATTR: origin},
            system_attrs={},
            intermediate_values={},
        )
        for i, (params, values, origin) in enumerate(found)
    ]


class ObservingSampler(optuna.samplers.BaseSampler):
    """A sampler that reads fixed observations before the study's own trials.

    Every call goes to the wrapped sampler with the study it was given (for a
    Hyperband study, its bracket) plus the observations: the study's own trials,
    counts and answers are untouched.
    """

    def __init__(
        self, sampler: optuna.samplers.BaseSampler, observations: list[FrozenTrial]
    ) -> None:
        self.sampler = sampler
        self.observations = observations

    def _view(self, study: optuna.Study) -> optuna.Study:
        return study_with_observations(study, self.observations)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self.sampler.infer_relative_search_space(self._view(study), trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self.sampler.sample_relative(self._view(study), trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self.sampler.sample_independent(
            self._view(study), trial, param_name, param_distribution
        )

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.sampler.before_trial(self._view(study), trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self.sampler.after_trial(self._view(study), trial, state, values)

    def reseed_rng(self) -> None:
        self.sampler.reseed_rng()


def observing_sampler(
    sampler: optuna.samplers.BaseSampler,
    storage: BaseStorage,
    *,
    optuna_study_id: int,
    spec: StudySpec,
) -> ObservingSampler:
    """`sampler` with the observations kept for the study at its creation, rebuilt now."""
    sources, _ = recorded(storage, optuna_study_id=optuna_study_id)
    return ObservingSampler(sampler, observations(storage, sources=sources, spec=spec))
