"""The search: parameter distributions, and the Optuna samplers and pruners a spec names.

Public names are re-exported by `tunefleet.spec`; import them from there.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, StrictBool, StrictFloat, StrictInt, field_validator, model_validator

from tunefleet._spec_base import Loc, Problems, SpecError, SpecModel, custom_error, show_value

if TYPE_CHECKING:
    from tunefleet.spec import StudySpec

MAX_GRID_POINTS = 100_000
ParamValue = StrictBool | StrictInt | StrictFloat | str
"""A hyperparameter value as JSON carries it."""


class FloatParam(SpecModel):
    """A float drawn from [low, high], optionally on a log scale or a grid of `step`."""

    type: Literal["float"] = Field(description="Distribution kind.")
    low: float = Field(description="Lower bound, inclusive.", examples=[1e-4])
    high: float = Field(description="Upper bound, inclusive.", examples=[1e-1])
    log: bool = Field(False, description="Sample on a log scale; needs low > 0, no step.")
    step: float | None = Field(
        None, gt=0, description="Discretization step; None for a continuous range."
    )

    @model_validator(mode="after")
    def _check_range(self) -> FloatParam:
        problems = Problems()
        if self.low >= self.high:
            problems.add(("low",), _empty_range(self.low, self.high), self.low)
        if self.log and self.low <= 0:
            problems.add(("low",), f"a log range needs low > 0, got {self.low:g}", self.low)
        if self.log and self.step is not None:
            problems.add(("step",), "step cannot be combined with log: true", self.step)
        if self.step is not None and not problems and self.step > self.high - self.low:
            problems.add(("step",), f"step ({self.step:g}) is larger than the range", self.step)
        problems.raise_if_any("FloatParam")
        return self


def _empty_range(low: float, high: float) -> str:
    return (
        f"empty range: low ({low:g}) must be below high ({high:g}); "
        "to pin one value use fixed_params"
    )


class IntParam(SpecModel):
    """An integer drawn from [low, high] with `step`, optionally on a log scale."""

    type: Literal["int"] = Field(description="Distribution kind.")
    low: int = Field(description="Lower bound, inclusive.", examples=[1])
    high: int = Field(description="Upper bound, inclusive.", examples=[4])
    log: bool = Field(False, description="Sample on a log scale; needs low >= 1 and step 1.")
    step: int = Field(1, ge=1, description="Spacing between the values.")

    @model_validator(mode="after")
    def _check_range(self) -> IntParam:
        problems = Problems()
        if self.low >= self.high:
            problems.add(("low",), _empty_range(self.low, self.high), self.low)
        if self.log and self.low <= 0:
            problems.add(("low",), f"a log range needs low >= 1, got {self.low}", self.low)
        if self.log and self.step != 1:
            problems.add(("step",), "a log range needs step 1", self.step)
        if self.step > 1 and not problems and self.step > self.high - self.low:
            problems.add(("step",), f"step ({self.step}) is larger than the range", self.step)
        problems.raise_if_any("IntParam")
        return self


class CategoricalParam(SpecModel):
    """One of a list of values."""

    type: Literal["categorical"] = Field(description="Distribution kind.")
    choices: list[ParamValue] = Field(
        min_length=1,
        max_length=64,
        description="The values to choose from (strings or numbers), without duplicates.",
        examples=[["relu", "gelu", "silu"]],
    )

    @field_validator("choices")
    @classmethod
    def _unique(cls, choices: list[ParamValue]) -> list[ParamValue]:
        seen = [choice_key(c) for c in choices]
        if len(set(seen)) != len(seen):
            raise custom_error("choices must not repeat a value")
        for c in choices:
            if isinstance(c, float) and not math.isfinite(c):
                raise custom_error("choices must be finite numbers")
        return choices


SearchParam = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


# Samplers -------------------------------------------------------------------

_Seed = Annotated[
    Annotated[int, Field(ge=0, le=2**32 - 1)] | None,
    Field(description="Sampler seed; null for a random one."),
]


class TPESampler(SpecModel):
    """Tree-structured Parzen Estimator (Optuna's default)."""

    type: Literal["tpe"] = Field(description="Sampler kind.")
    seed: _Seed = None
    n_startup_trials: int = Field(10, ge=0, le=10_000, description="Random trials first.")
    n_ei_candidates: int = Field(24, ge=1, le=10_000, description="Candidates per sample.")
    multivariate: bool | None = Field(
        None, description="Model parameters jointly; null: yes for one objective, no for more."
    )
    group: bool = Field(False, description="Decompose the space into groups (needs multivariate).")
    constant_liar: bool = Field(True, description="Avoid sampling near running trials.")

    @model_validator(mode="after")
    def _group_needs_multivariate(self) -> TPESampler:
        if self.group and self.multivariate is False:
            problems = Problems()
            problems.add(("group",), "group needs multivariate: true", True)
            problems.raise_if_any("TPESampler")
        return self


class NSGA2Sampler(SpecModel):
    """NSGA-II genetic algorithm, for one or several objectives."""

    type: Literal["nsga2"] = Field(description="Sampler kind.")
    seed: _Seed = None
    population_size: int = Field(50, ge=2, le=10_000, description="Trials per generation.")
    mutation_prob: float | None = Field(
        None, ge=0, le=1, description="Mutation probability; null for 1/number of params."
    )
    crossover_prob: float = Field(0.9, ge=0, le=1, description="Crossover probability.")
    swapping_prob: float = Field(0.5, ge=0, le=1, description="Uniform crossover swap rate.")


class RandomSampler(SpecModel):
    """Independent uniform sampling."""

    type: Literal["random"] = Field(description="Sampler kind.")
    seed: _Seed = None


class GPSampler(SpecModel):
    """Gaussian-process Bayesian optimization (logEI, or logEHVI for several objectives)."""

    type: Literal["gp"] = Field(description="Sampler kind.")
    seed: _Seed = None
    n_startup_trials: int = Field(10, ge=0, le=10_000, description="Random trials first.")
    deterministic_objective: bool = Field(False, description="Assume noise-free objectives.")


class CmaEsSampler(SpecModel):
    """CMA-ES: one objective, at least two float or int parameters."""

    type: Literal["cmaes"] = Field(description="Sampler kind.")
    seed: _Seed = None
    n_startup_trials: int = Field(1, ge=0, le=10_000, description="Random trials first.")
    popsize: int | None = Field(None, ge=2, le=10_000, description="Population size.")
    use_separable_cma: bool = Field(False, description="Diagonal covariance (sep-CMA-ES).")
    with_margin: bool = Field(False, description="CMA-ES with margin, for int parameters.")
    lr_adapt: bool = Field(False, description="Learning-rate adaptation for noisy problems.")

    @model_validator(mode="after")
    def _compatible_options(self) -> CmaEsSampler:
        problems = Problems()
        if self.with_margin and self.use_separable_cma:
            problems.add(("with_margin",), "with_margin excludes use_separable_cma", True)
        if self.lr_adapt and (self.with_margin or self.use_separable_cma):
            problems.add(("lr_adapt",), "lr_adapt excludes with_margin and use_separable_cma", True)
        problems.raise_if_any("CmaEsSampler")
        return self


class QMCSampler(SpecModel):
    """Quasi-Monte Carlo low-discrepancy sequence."""

    type: Literal["qmc"] = Field(description="Sampler kind.")
    seed: _Seed = None
    qmc_type: Literal["sobol", "halton"] = Field("sobol", description="Sequence kind.")
    scramble: bool = Field(False, description="Randomize the sequence (uses the seed).")


class GridSampler(SpecModel):
    """Every combination of a finite space (categorical, int, or float with step)."""

    type: Literal["grid"] = Field(description="Sampler kind.")
    seed: _Seed = None


SamplerSpec = Annotated[
    TPESampler | NSGA2Sampler | RandomSampler | GPSampler | CmaEsSampler | QMCSampler | GridSampler,
    Field(discriminator="type"),
]


# Pruners --------------------------------------------------------------------


class MedianPruner(SpecModel):
    """Prune a trial whose value is worse than the median of earlier trials at the same step."""

    type: Literal["median"] = Field(description="Pruner kind.")
    n_startup_trials: int = Field(5, ge=0, le=10_000, description="Trials never pruned first.")
    n_warmup_steps: int = Field(0, ge=0, le=10_000, description="Epochs never pruned.")
    interval_steps: int = Field(1, ge=1, le=10_000, description="Check every this many epochs.")
    n_min_trials: int = Field(1, ge=1, le=10_000, description="Trials needed at a step.")


class HyperbandPruner(SpecModel):
    """Hyperband over successive-halving brackets; resources are epochs."""

    type: Literal["hyperband"] = Field(description="Pruner kind.")
    min_resource: int = Field(1, ge=1, le=100_000, description="Epochs before the first cut.")
    max_resource: int | None = Field(
        None, ge=1, le=100_000, description="Epochs of a full trial; null for budget.epochs."
    )
    reduction_factor: int = Field(3, ge=2, le=100, description="Keep 1/this at each rung.")
    bootstrap_count: int = Field(0, ge=0, le=10_000, description="Trials needed at a rung.")


class SuccessiveHalvingPruner(SpecModel):
    """Asynchronous successive halving; resources are epochs."""

    type: Literal["successive_halving"] = Field(description="Pruner kind.")
    min_resource: int | Literal["auto"] = Field(
        "auto", description="Epochs before the first cut, or auto."
    )
    reduction_factor: int = Field(4, ge=2, le=100, description="Keep 1/this at each rung.")
    min_early_stopping_rate: int = Field(0, ge=0, le=100, description="Rung offset.")
    bootstrap_count: int = Field(0, ge=0, le=10_000, description="Trials needed at a rung.")

    @field_validator("min_resource")
    @classmethod
    def _positive(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= 100_000:
            raise custom_error("min_resource must be between 1 and 100000, or auto")
        return v


class NopPruner(SpecModel):
    """Never prune."""

    type: Literal["none"] = Field(description="Pruner kind.")


PrunerSpec = Annotated[
    MedianPruner | HyperbandPruner | SuccessiveHalvingPruner | NopPruner,
    Field(discriminator="type"),
]


def grid_count(dist: FloatParam | IntParam | CategoricalParam) -> int:
    if isinstance(dist, CategoricalParam):
        return len(dist.choices)
    if dist.step is None:
        raise ValueError("a continuous range has no grid")
    return math.floor((dist.high - dist.low) / dist.step + 1e-9) + 1


def choice_key(value: Any) -> tuple[str, Any]:
    """Compare choices as JSON does: 1 and 1.0 are the same number, true is not 1."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", float(value))
    return (type(value).__name__, value)


def problem_in_distribution(
    dist: FloatParam | IntParam | CategoricalParam, value: Any
) -> str | None:
    if isinstance(dist, CategoricalParam):
        if choice_key(value) not in {choice_key(c) for c in dist.choices}:
            choices = ", ".join(repr(c) for c in dist.choices)
            return f"must be one of {choices}, got {show_value(value)}"
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return f"must be a finite number, got {show_value(value)}"
    if isinstance(dist, IntParam) and not float(value).is_integer():
        return f"must be an integer, got {show_value(value)}"
    if not dist.low <= value <= dist.high:
        return f"must be in [{dist.low:g}, {dist.high:g}], got {show_value(value)}"
    if dist.step is not None:
        k = (value - dist.low) / dist.step
        if abs(k - round(k)) > 1e-8:
            return f"must be low + a multiple of step {dist.step:g}, got {show_value(value)}"
    return None


def canonical_value(dist: FloatParam | IntParam | CategoricalParam, value: Any) -> Any:
    if isinstance(dist, IntParam):
        return int(value)
    if isinstance(dist, FloatParam):
        return float(value)
    key = choice_key(value)
    return next(c for c in dist.choices if choice_key(c) == key)


def grid_size(spec: StudySpec) -> int:
    """Number of points of a finite search space (raises ValueError for a continuous one)."""
    return math.prod(grid_count(dist) for dist in spec.search_space.values())


def grid_values(spec: StudySpec) -> dict[str, list[ParamValue]]:
    """Every value of each parameter of a finite search space (for the grid sampler)."""
    values: dict[str, list[ParamValue]] = {}
    for name, dist in spec.search_space.items():
        if isinstance(dist, CategoricalParam):
            values[name] = list(dist.choices)
        elif isinstance(dist, IntParam):
            values[name] = list(range(dist.low, dist.high + 1, dist.step))
        else:
            assert dist.step is not None
            values[name] = [round(dist.low + i * dist.step, 12) for i in range(grid_count(dist))]
    return values


def validate_params(spec: StudySpec, params: dict[str, Any]) -> dict[str, Any]:
    """Check `params` (a subset of the search space) against it; return them canonical.

    Used to enqueue a trial with fixed values: every name must be searched by
    the spec and every value must lie in its distribution (on its step, among
    its choices). Raises SpecError with paths like `params.lr`.
    """
    errors: list[dict[str, str]] = []
    out: dict[str, Any] = {}
    for name, value in params.items():
        path = f"params.{name}"
        dist = spec.search_space.get(name)
        if dist is None:
            errors.append(
                {
                    "path": path,
                    "message": f"{show_value(name)} is not in the study's search "
                    "space; searched: " + ", ".join(spec.search_space),
                }
            )
            continue
        why = problem_in_distribution(dist, value)
        if why is not None:
            errors.append({"path": path, "message": f"{name} {why}"})
            continue
        out[name] = canonical_value(dist, value)
    if errors:
        raise SpecError(errors)
    return out


def check_sampler(spec: StudySpec, problems: Problems) -> None:
    """The sampler against the objectives and the search space (cmaes, grid)."""
    sampler = spec.sampler
    loc: Loc = ("sampler", "type")
    if isinstance(sampler, CmaEsSampler):
        numeric = [d for d in spec.search_space.values() if not isinstance(d, CategoricalParam)]
        if len(spec.objectives) > 1:
            problems.add(loc, "cmaes handles one objective only; use nsga2, tpe or gp", "cmaes")
        elif len(numeric) < 2:
            problems.add(
                loc,
                "cmaes needs at least two float or int parameters in search_space; "
                "use tpe or gp for this space",
                "cmaes",
            )
    elif isinstance(sampler, GridSampler):
        for name, dist in spec.search_space.items():
            if isinstance(dist, FloatParam) and dist.step is None:
                problems.add(
                    loc,
                    f"grid needs a finite space: give search_space.{name} a step or "
                    "make it categorical",
                    "grid",
                )
                return
        if (size := grid_size(spec)) > MAX_GRID_POINTS:
            problems.add(
                loc,
                f"the grid has {size} points, more than {MAX_GRID_POINTS}: use fewer "
                "values or another sampler",
                "grid",
            )


def check_pruner(spec: StudySpec, problems: Problems) -> None:
    """The pruner against the objectives and the budget."""
    pruner = spec.pruner
    if pruner is None or isinstance(pruner, NopPruner):
        return
    if len(spec.objectives) > 1:
        problems.add(
            ("pruner", "type"),
            "Optuna cannot prune multi-objective studies: use pruner type none "
            "(or leave the pruner out)",
            pruner.type,
        )
    elif isinstance(pruner, HyperbandPruner):
        max_resource = pruner.max_resource or spec.budget.epochs
        if pruner.min_resource > max_resource:
            problems.add(
                ("pruner", "min_resource"),
                f"min_resource ({pruner.min_resource}) exceeds max_resource "
                f"({max_resource} epochs)",
                pruner.min_resource,
            )
