"""A spec's search in Optuna's terms: distributions, the sampler and the pruner.

Samplers are rebuilt from the spec for each Study object. A sampler with a
fixed seed starts the same random stream every time it is built, so callers
that ask for trials should keep one Study object per study and process
(service/study_cache.py) when the spec sets a seed.
"""

from __future__ import annotations

import warnings
import zlib

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from service._optuna_internals import ObservationCachingTPE
from service.errors import InvalidSpec
from tunefleet import spec as specs
from tunefleet.spec import StudySpec

__all__ = [
    "build_pruner",
    "build_sampler",
    "check_server_support",
    "distributions",
    "sampler_reads_history",
]


def distributions(spec: StudySpec) -> dict[str, BaseDistribution]:
    """Optuna distributions of the search space, for `study.ask(fixed_distributions=...)`."""
    out: dict[str, BaseDistribution] = {}
    for name, param in spec.search_space.items():
        if isinstance(param, specs.FloatParam):
            out[name] = FloatDistribution(param.low, param.high, log=param.log, step=param.step)
        elif isinstance(param, specs.IntParam):
            out[name] = IntDistribution(param.low, param.high, log=param.log, step=param.step)
        else:
            out[name] = CategoricalDistribution(list(param.choices))
    return out


def check_server_support(spec: StudySpec) -> None:
    """Reject a valid spec that this server cannot run: Optuna refuses the sampler or
    pruner options (found now, not at the first lease)."""
    for part, build in (("sampler", build_sampler), ("pruner", build_pruner)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                build(spec)
        except (ValueError, TypeError) as error:
            raise InvalidSpec(f"Optuna refuses this {part}: {error}", path=[part]) from None


def build_sampler(
    spec: StudySpec, *, study_key: int = 0, for_leases: bool = False
) -> optuna.samplers.BaseSampler:
    """The sampler the spec names, with its options.

    `study_key` (TuneFleet's study id) seeds a scrambled QMC sequence that has
    no seed: every process must draw from the same sequence. `for_leases`
    gives TPE the variant that keeps its observations between asks
    (service/_optuna_internals.py); it samples what Optuna's own TPESampler samples.
    """
    s = spec.sampler
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if isinstance(s, specs.TPESampler):
            tpe = ObservationCachingTPE if for_leases else optuna.samplers.TPESampler
            return tpe(
                seed=s.seed,
                n_startup_trials=s.n_startup_trials,
                n_ei_candidates=s.n_ei_candidates,
                multivariate=s.multivariate,
                group=s.group,
                constant_liar=s.constant_liar,
            )
        if isinstance(s, specs.NSGA2Sampler):
            return optuna.samplers.NSGAIISampler(
                seed=s.seed,
                population_size=s.population_size,
                mutation_prob=s.mutation_prob,
                crossover_prob=s.crossover_prob,
                swapping_prob=s.swapping_prob,
            )
        if isinstance(s, specs.RandomSampler):
            return optuna.samplers.RandomSampler(seed=s.seed)
        if isinstance(s, specs.GPSampler):
            return optuna.samplers.GPSampler(
                seed=s.seed,
                n_startup_trials=s.n_startup_trials,
                deterministic_objective=s.deterministic_objective,
            )
        if isinstance(s, specs.CmaEsSampler):
            return optuna.samplers.CmaEsSampler(
                seed=s.seed,
                n_startup_trials=s.n_startup_trials,
                popsize=s.popsize,
                use_separable_cma=s.use_separable_cma,
                with_margin=s.with_margin,
                lr_adapt=s.lr_adapt,
            )
        if isinstance(s, specs.QMCSampler):
            seed = s.seed if s.seed is not None else zlib.crc32(f"qmc-{study_key}".encode())
            return optuna.samplers.QMCSampler(qmc_type=s.qmc_type, scramble=s.scramble, seed=seed)
        if isinstance(s, specs.GridSampler):
            return _GridSampler(specs.grid_values(spec), seed=s.seed)
    raise AssertionError(f"unhandled sampler {s!r}")


def sampler_reads_history(spec: StudySpec) -> bool:
    """Whether the spec's sampler reads the study's finished trials to draw the next one.

    Random search draws each trial on its own; every other sampler reads the
    history (TPE, GP and CMA-ES their observations, NSGA-II its generations, QMC
    its first trial's search space, grid the points already run).
    """
    return not isinstance(spec.sampler, specs.RandomSampler)


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler for ask-and-tell: its after_trial only calls study.stop()
    once the grid is covered, which raises outside study.optimize() and would fail
    every tell from then on. The study's trial budget ends the search instead."""

    def after_trial(self, study, trial, state, values) -> None:
        return None


def build_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The pruner the spec names; epochs are the resource of the halving pruners."""
    p = spec.pruner
    if isinstance(p, specs.MedianPruner):
        return optuna.pruners.MedianPruner(
            n_startup_trials=p.n_startup_trials,
            n_warmup_steps=p.n_warmup_steps,
            interval_steps=p.interval_steps,
            n_min_trials=p.n_min_trials,
        )
    if isinstance(p, specs.HyperbandPruner):
        return optuna.pruners.HyperbandPruner(
            min_resource=p.min_resource,
            max_resource=p.max_resource or spec.budget.epochs,
            reduction_factor=p.reduction_factor,
            bootstrap_count=p.bootstrap_count,
        )
    if isinstance(p, specs.SuccessiveHalvingPruner):
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=p.min_resource,
            reduction_factor=p.reduction_factor,
            min_early_stopping_rate=p.min_early_stopping_rate,
            bootstrap_count=p.bootstrap_count,
        )
    return optuna.pruners.NopPruner()
