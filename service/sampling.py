"""Sampling a leased trial with one read of the study.

Optuna's `study.ask` reads the study's trials from the database up to three
times (the search space, the sampler's startup check, constant liar's view of
running trials), reads the new trial back, and writes constant liar's
relative parameters and then each parameter in transactions of their own.
The lease path already holds the study's locks and has just read the trials
to check the budget, so it samples on that one read instead, over a
`SnapshotStorage` and, for TPE, the `ObservationCachingTPE`
(service/_optuna_internals.py).

Neither changes what is sampled: with the same seed and history the service
draws the same parameters as `study.ask` with Optuna's own samplers
(tests/service/test_sampling.py holds both to that).
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial

from service._optuna_internals import distribution_contains, single_value, study_view_for


def sample_params(
    study: optuna.Study,
    trial: FrozenTrial,
    distributions: dict[str, BaseDistribution],
    *,
    fixed: dict[str, Any] | None = None,
) -> None:
    """Fill a new trial's params with values for `distributions`, as `trial.suggest_*`
    would draw them: a `fixed` value (an enqueued or re-queued trial's) first, then
    the sampler's relative sample where it covers a parameter, else an independent one."""
    fixed = fixed or {}
    sampler = study.sampler
    view = study_view_for(study, trial)
    sampler.before_trial(view, trial)
    relative_space = sampler.infer_relative_search_space(view, trial)
    relative = sampler.sample_relative(view, trial, relative_space)
    for name, distribution in distributions.items():
        if name in fixed:
            value = fixed[name]
        elif distribution.single():
            value = single_value(distribution)
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
    return distribution_contains(dist, dist.to_internal_repr(relative[name]))
