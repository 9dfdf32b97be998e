"""The study spec: what a user asks TuneFleet to search, validated in one place.

`StudySpec` is the single pydantic model of a study. The API validates request
bodies with it, the CLI reads files with `StudySpec.from_text`, the service
stores `spec.model_dump(mode="json")` with the study, and workers read that
dict back. Every model forbids unknown keys so that a typo is an error, not a
silently ignored option.

Pruning and multi-objective studies: Optuna cannot prune a study with more
than one objective (`Trial.report` / `should_prune` raise for them). A spec
with several objectives therefore gets `pruner: {type: none}` when it names no
pruner, and is rejected when it asks for any other pruner. Workers still send
intermediate values; they are recorded for the dashboard, never acted on.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

__all__ = [
    "BUILTIN_DATASETS",
    "BUILTIN_MODELS",
    "CORRUPTIONS",
    "KNOWN_PARAMS",
    "METRICS",
    "Budget",
    "CategoricalParam",
    "Compression",
    "FloatParam",
    "IntParam",
    "KnownParam",
    "Objective",
    "ParamValue",
    "PrunerSpec",
    "Robustness",
    "SamplerSpec",
    "SearchParam",
    "SpecError",
    "StudySpec",
    "clean_loc",
    "field_path",
    "grid_size",
    "grid_values",
    "validate_params",
]

# --------------------------------------------------------------------------
# Vocabulary shared with the workers
# --------------------------------------------------------------------------

ParamValue = StrictBool | StrictInt | StrictFloat | str
"""A hyperparameter value as JSON carries it."""


@dataclass(frozen=True)
class KnownParam:
    """A hyperparameter the trial engine understands, its default and its valid values."""

    kind: Literal["float", "int", "categorical"]
    default: float | int | str
    description: str
    choices: tuple[str, ...] | None = None
    min: float | None = None
    max: float | None = None
    min_open: bool = False  # min itself is not allowed
    max_open: bool = False  # max itself is not allowed

    def bounds_text(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(self.choices)
        left = "(" if self.min_open else "["
        right = ")" if self.max_open else "]"
        return f"in {left}{self.min:g}, {self.max:g}{right}"

    def problem_with(self, value: Any) -> str | None:
        """Why `value` is not valid for this parameter, or None when it is."""
        if self.kind == "categorical":
            if not isinstance(value, str) or value not in (self.choices or ()):
                return f"must be {self.bounds_text()}, got {_show(value)}"
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"must be a number ({self.kind}), got {_show(value)}"
        if self.kind == "int" and not float(value).is_integer():
            return f"must be an integer, got {_show(value)}"
        if not math.isfinite(value):
            return f"must be finite, got {_show(value)}"
        assert self.min is not None and self.max is not None
        too_low = value <= self.min if self.min_open else value < self.min
        too_high = value >= self.max if self.max_open else value > self.max
        if too_low or too_high:
            return f"must be {self.bounds_text()}, got {_show(value)}"
        return None

    def coerce(self, value: Any) -> Any:
        """The canonical Python value (int for int params, float for float params)."""
        if self.kind == "int":
            return int(value)
        if self.kind == "float":
            return float(value)
        return value


KNOWN_PARAMS: dict[str, KnownParam] = {
    "lr": KnownParam("float", 1e-3, "learning rate", min=0.0, max=10.0, min_open=True),
    "activation": KnownParam(
        "categorical",
        "relu",
        "activation of the new head",
        choices=("relu", "gelu", "silu", "tanh", "leaky_relu", "elu"),
    ),
    "head_depth": KnownParam("int", 1, "layers in the new head", min=1, max=8),
    "head_width": KnownParam("int", 128, "width of the head's hidden layers", min=1, max=8192),
    "dropout": KnownParam("float", 0.0, "dropout in the head", min=0.0, max=1.0, max_open=True),
    "weight_decay": KnownParam("float", 0.0, "decoupled weight decay", min=0.0, max=10.0),
    "batch_size": KnownParam("int", 64, "training batch size", min=1, max=4096),
    "unfreeze_blocks": KnownParam(
        "int", 0, "backbone blocks trained, counted from the top", min=0, max=1000
    ),
    "l2sp_alpha": KnownParam(
        "float", 0.0, "strength of the L2-SP pull towards pretrained weights", min=0.0, max=100.0
    ),
    "augment_strength": KnownParam("float", 0.0, "data augmentation strength", min=0.0, max=1.0),
    "label_smoothing": KnownParam("float", 0.0, "label smoothing", min=0.0, max=1.0, max_open=True),
    "optimizer": KnownParam("categorical", "adam", "optimizer", choices=("adam", "adamw", "sgd")),
}
"""Every hyperparameter a spec may search or fix, with the engine's default."""

METRICS: dict[str, Literal["maximize", "minimize"]] = {
    "accuracy": "maximize",  # clean top-1 on the held-out test split
    "robustness": "maximize",  # mean top-1 under the robustness suite
    "latency_ms": "minimize",  # inference latency of one batch, after compression
    "params": "minimize",  # parameter count, after compression
    "size_mb": "minimize",  # serialized size, after compression
}
"""Metrics a trial reports, with the direction used when an objective names none."""

BUILTIN_MODELS = ("digits-cnn",)
BUILTIN_DATASETS = ("digits-5to9",)
CORRUPTIONS = ("blur", "contrast", "brightness")
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")
MAX_GRID_POINTS = 100_000
NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
_TORCHVISION_ARCH = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------

Loc = tuple[str | int, ...]


class SpecError(ValueError):
    """A spec, a parameter set or a spec file that cannot be used; `errors` has the paths."""

    def __init__(self, errors: list[dict[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{e['path'] or '(spec)'}: {e['message']}" for e in errors))

    @classmethod
    def from_validation_error(cls, exc: ValidationError, *, prefix: Loc = ()) -> SpecError:
        return cls(
            [
                {"path": field_path(prefix + tuple(e["loc"])), "message": e["msg"]}
                for e in exc.errors(include_url=False)
            ]
        )


_UNION_FIELDS = {"sampler", "pruner"}
_UNION_TAGS = {"float", "int", "categorical"} | {
    "tpe",
    "nsga2",
    "random",
    "gp",
    "cmaes",
    "qmc",
    "grid",
    "median",
    "hyperband",
    "successive_halving",
    "none",
}


def clean_loc(loc: Loc) -> list[str | int]:
    """`("body", "search_space", "lr", "float", "low")` -> `["search_space", "lr", "low"]`.

    Drops the request part (`body`, `query`) and the tags pydantic inserts for
    discriminated unions, so the location is the one a user edits in the spec.
    """
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    out: list[str | int] = []
    for i, part in enumerate(parts):
        parent = parts[i - 1] if i >= 1 else None
        grandparent = parts[i - 2] if i >= 2 else None
        is_tag = part in _UNION_TAGS and (parent in _UNION_FIELDS or grandparent == "search_space")
        if not is_tag:
            out.append(part)
    return out


def field_path(loc: Loc) -> str:
    """The dotted path of a pydantic error location: `search_space.lr.low`."""
    return ".".join(str(part) for part in clean_loc(loc))


def _show(value: Any, limit: int = 80) -> str:
    """repr() for messages, cut short: a client may send megabytes of text."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _invalid(message: str) -> PydanticCustomError:
    """An error whose message pydantic shows as it is (no "Value error, " prefix)."""
    return PydanticCustomError("invalid_spec", "{reason}", {"reason": message})


class _Problems(list):
    """Problems found in a model, each at its own location relative to that model."""

    def add(self, loc: Loc, message: str, value: Any = None) -> None:
        self.append((loc, message, value))

    def raise_if_any(self, title: str) -> None:
        """Raise one ValidationError holding every problem (pydantic nests the locations)."""
        if self:
            raise ValidationError.from_exception_data(
                title,
                [
                    InitErrorDetails(
                        type=_invalid(msg),
                        loc=loc,
                        input=value,
                    )
                    for loc, msg, value in self
                ],
            )


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, str_max_length=1024)


class FloatParam(_Model):
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
        problems = _Problems()
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


class IntParam(_Model):
    """An integer drawn from [low, high] with `step`, optionally on a log scale."""

    type: Literal["int"] = Field(description="Distribution kind.")
    low: int = Field(description="Lower bound, inclusive.", examples=[1])
    high: int = Field(description="Upper bound, inclusive.", examples=[4])
    log: bool = Field(False, description="Sample on a log scale; needs low >= 1 and step 1.")
    step: int = Field(1, ge=1, description="Spacing between the values.")

    @model_validator(mode="after")
    def _check_range(self) -> IntParam:
        problems = _Problems()
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


class CategoricalParam(_Model):
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
        seen = [_choice_key(c) for c in choices]
        if len(set(seen)) != len(seen):
            raise _invalid("choices must not repeat a value")
        for c in choices:
            if isinstance(c, float) and not math.isfinite(c):
                raise _invalid("choices must be finite numbers")
        return choices


SearchParam = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


class Objective(_Model):
    """One metric to optimize."""

    metric: Literal["accuracy", "robustness", "latency_ms", "params", "size_mb"] = Field(
        description="What the trial measures: " + ", ".join(METRICS) + "."
    )
    direction: Literal["maximize", "minimize"] = Field(
        description="maximize or minimize; defaults to the metric's natural direction "
        "(maximize accuracy and robustness, minimize the others)."
    )

    @model_validator(mode="before")
    @classmethod
    def _default_direction(cls, data: Any) -> Any:
        if isinstance(data, dict) and "direction" not in data:
            # An unknown metric is reported on its own, without a second error here.
            metric = data.get("metric")
            data = {**data, "direction": METRICS.get(metric, "maximize")}
        return data


class PGD(_Model):
    """Projected gradient descent attack settings."""

    eps: float = Field(0.03, gt=0, le=1, description="L-inf radius, in [0, 1] pixel units.")
    steps: int = Field(5, ge=1, le=100, description="Attack iterations.")


class Robustness(_Model):
    """The perturbation suite behind the `robustness` metric."""

    gaussian_sigma: list[Annotated[float, Field(gt=0, le=5)]] = Field(
        default_factory=lambda: [0.1, 0.3],
        max_length=10,
        description="Standard deviations of additive Gaussian noise.",
    )
    fgsm_eps: list[Annotated[float, Field(gt=0, le=1)]] = Field(
        default_factory=lambda: [0.03], max_length=10, description="FGSM attack radii."
    )
    pgd: PGD | None = Field(None, description="PGD attack; null to skip.")
    corruptions: list[Literal["blur", "contrast", "brightness"]] = Field(
        default_factory=list,
        max_length=len(CORRUPTIONS),
        description="Common corruptions: " + ", ".join(CORRUPTIONS) + ".",
    )

    def is_empty(self) -> bool:
        return not (self.gaussian_sigma or self.fgsm_eps or self.pgd or self.corruptions)


class Compression(_Model):
    """Compression applied before measuring params, size_mb and latency_ms."""

    quantize_int8: bool = Field(False, description="Dynamic int8 quantization of linear layers.")
    prune_amount: float = Field(
        0.0, ge=0, le=0.95, description="Fraction of weights removed by magnitude pruning."
    )


# Samplers -------------------------------------------------------------------

_Seed = Annotated[
    Annotated[int, Field(ge=0, le=2**32 - 1)] | None,
    Field(description="Sampler seed; null for a random one."),
]


class TPESampler(_Model):
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
            problems = _Problems()
            problems.add(("group",), "group needs multivariate: true", True)
            problems.raise_if_any("TPESampler")
        return self


class NSGA2Sampler(_Model):
    """NSGA-II genetic algorithm, for one or several objectives."""

    type: Literal["nsga2"] = Field(description="Sampler kind.")
    seed: _Seed = None
    population_size: int = Field(50, ge=2, le=10_000, description="Trials per generation.")
    mutation_prob: float | None = Field(
        None, ge=0, le=1, description="Mutation probability; null for 1/number of params."
    )
    crossover_prob: float = Field(0.9, ge=0, le=1, description="Crossover probability.")
    swapping_prob: float = Field(0.5, ge=0, le=1, description="Uniform crossover swap rate.")


class RandomSampler(_Model):
    """Independent uniform sampling."""

    type: Literal["random"] = Field(description="Sampler kind.")
    seed: _Seed = None


class GPSampler(_Model):
    """Gaussian-process Bayesian optimization (logEI, or logEHVI for several objectives)."""

    type: Literal["gp"] = Field(description="Sampler kind.")
    seed: _Seed = None
    n_startup_trials: int = Field(10, ge=0, le=10_000, description="Random trials first.")
    deterministic_objective: bool = Field(False, description="Assume noise-free objectives.")


class CmaEsSampler(_Model):
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
        problems = _Problems()
        if self.with_margin and self.use_separable_cma:
            problems.add(("with_margin",), "with_margin excludes use_separable_cma", True)
        if self.lr_adapt and (self.with_margin or self.use_separable_cma):
            problems.add(("lr_adapt",), "lr_adapt excludes with_margin and use_separable_cma", True)
        problems.raise_if_any("CmaEsSampler")
        return self


class QMCSampler(_Model):
    """Quasi-Monte Carlo low-discrepancy sequence."""

    type: Literal["qmc"] = Field(description="Sampler kind.")
    seed: _Seed = None
    qmc_type: Literal["sobol", "halton"] = Field("sobol", description="Sequence kind.")
    scramble: bool = Field(False, description="Randomize the sequence (uses the seed).")


class GridSampler(_Model):
    """Every combination of a finite space (categorical, int, or float with step)."""

    type: Literal["grid"] = Field(description="Sampler kind.")
    seed: _Seed = None


SamplerSpec = Annotated[
    TPESampler | NSGA2Sampler | RandomSampler | GPSampler | CmaEsSampler | QMCSampler | GridSampler,
    Field(discriminator="type"),
]


# Pruners --------------------------------------------------------------------


class MedianPruner(_Model):
    """Prune a trial whose value is worse than the median of earlier trials at the same step."""

    type: Literal["median"] = Field(description="Pruner kind.")
    n_startup_trials: int = Field(5, ge=0, le=10_000, description="Trials never pruned first.")
    n_warmup_steps: int = Field(0, ge=0, le=10_000, description="Epochs never pruned.")
    interval_steps: int = Field(1, ge=1, le=10_000, description="Check every this many epochs.")
    n_min_trials: int = Field(1, ge=1, le=10_000, description="Trials needed at a step.")


class HyperbandPruner(_Model):
    """Hyperband over successive-halving brackets; resources are epochs."""

    type: Literal["hyperband"] = Field(description="Pruner kind.")
    min_resource: int = Field(1, ge=1, le=100_000, description="Epochs before the first cut.")
    max_resource: int | None = Field(
        None, ge=1, le=100_000, description="Epochs of a full trial; null for budget.epochs."
    )
    reduction_factor: int = Field(3, ge=2, le=100, description="Keep 1/this at each rung.")
    bootstrap_count: int = Field(0, ge=0, le=10_000, description="Trials needed at a rung.")


class SuccessiveHalvingPruner(_Model):
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
            raise _invalid("min_resource must be between 1 and 100000, or auto")
        return v


class NopPruner(_Model):
    """Never prune."""

    type: Literal["none"] = Field(description="Pruner kind.")


PrunerSpec = Annotated[
    MedianPruner | HyperbandPruner | SuccessiveHalvingPruner | NopPruner,
    Field(discriminator="type"),
]


class Budget(_Model):
    """How much work the study may use."""

    max_trials: int = Field(
        50,
        ge=1,
        le=100_000,
        description="Trials that completed or were pruned, plus running ones; retries are free.",
    )
    epochs: int = Field(10, ge=1, le=10_000, description="Fine-tuning epochs of a full trial.")
    trial_timeout_s: int = Field(
        900, ge=1, le=7 * 24 * 3600, description="Wall-clock limit of one trial."
    )
    max_retries: int = Field(2, ge=0, le=10, description="Re-runs of a trial whose worker died.")


# The spec -------------------------------------------------------------------

_EXAMPLE = {
    "name": "digits-transfer",
    "source_model": "builtin:digits-cnn",
    "dataset": "builtin:digits-5to9",
    "objectives": [
        {"metric": "accuracy", "direction": "maximize"},
        {"metric": "robustness", "direction": "maximize"},
    ],
    "search_space": {
        "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "activation": {"type": "categorical", "choices": ["relu", "gelu", "silu", "tanh"]},
        "head_depth": {"type": "int", "low": 1, "high": 3},
    },
    "sampler": {"type": "tpe"},
    "budget": {"max_trials": 50, "epochs": 10},
}


class StudySpec(_Model):
    """A study: source model, target dataset, search space, objectives and how to search."""

    model_config = ConfigDict(json_schema_extra={"examples": [_EXAMPLE]})

    name: str = Field(
        pattern=NAME_PATTERN,
        description="Unique among the owner's studies: lowercase letters, digits and '-'.",
        examples=["digits-transfer"],
    )
    source_model: str = Field(
        description="Pretrained model: builtin:<name> ("
        + ", ".join(BUILTIN_MODELS)
        + "), torchvision:<arch> (needs source_weights) or file:<path> ("
        + ", ".join(WEIGHT_SUFFIXES)
        + ").",
        examples=["builtin:digits-cnn", "torchvision:resnet18", "file:/models/b.safetensors"],
    )
    source_weights: str | None = Field(
        None,
        description="Local state-dict file for torchvision:<arch> ("
        + ", ".join(WEIGHT_SUFFIXES)
        + "); weights are never downloaded.",
    )
    dataset: str = Field(
        description="Target dataset: builtin:<name> ("
        + ", ".join(BUILTIN_DATASETS)
        + ") or imagefolder:<path>.",
        examples=["builtin:digits-5to9", "imagefolder:/data/pets"],
    )
    objectives: list[Objective] = Field(
        min_length=1, max_length=3, description="One to three metrics, each at most once."
    )
    search_space: dict[str, SearchParam] = Field(
        min_length=1,
        max_length=len(KNOWN_PARAMS),
        description="Hyperparameters to search, by name: " + ", ".join(KNOWN_PARAMS) + ".",
    )
    fixed_params: dict[str, ParamValue] = Field(
        default_factory=dict,
        max_length=len(KNOWN_PARAMS),
        description="Known hyperparameters pinned to one value (not searched).",
    )
    robustness: Robustness = Field(
        default_factory=Robustness, description="Perturbations behind the robustness metric."
    )
    compression: Compression = Field(
        default_factory=Compression, description="Applied before params/size_mb/latency_ms."
    )
    sampler: SamplerSpec = Field(
        default_factory=lambda: TPESampler(type="tpe"),
        description="Optuna sampler: tpe, nsga2, random, gp, cmaes, qmc or grid.",
    )
    pruner: PrunerSpec | None = Field(
        None,
        description="Optuna pruner: median, hyperband, successive_halving or none. Default: "
        "hyperband for one objective, none for several (Optuna cannot prune those).",
    )
    budget: Budget = Field(default_factory=Budget, description="Trial and time budget.")
    priority: int = Field(0, ge=0, le=100, description="Higher gets a larger share of the workers.")
    seed: int = Field(
        0, ge=0, le=2**31 - 1, description="Training seed base; a trial uses seed + its number."
    )

    # -- field checks ---------------------------------------------------------

    @field_validator("source_model")
    @classmethod
    def _check_source_model(cls, uri: str) -> str:
        scheme, sep, rest = uri.partition(":")
        if not sep or not rest:
            raise _invalid(
                f"{_show(uri)} has no scheme: use builtin:<name>, torchvision:<arch> or file:<path>"
            )
        if scheme == "builtin":
            if rest not in BUILTIN_MODELS:
                raise _invalid(
                    f"unknown built-in model {_show(rest)}; known: " + ", ".join(BUILTIN_MODELS)
                )
        elif scheme == "torchvision":
            if not _TORCHVISION_ARCH.match(rest):
                raise _invalid(f"{_show(rest)} is not a torchvision architecture name")
        elif scheme == "file":
            if not rest.endswith(WEIGHT_SUFFIXES):
                raise _invalid(
                    "a file: model must end in "
                    + ", ".join(WEIGHT_SUFFIXES)
                    + f", got {_show(rest)}"
                )
        else:
            raise _invalid(f"unknown scheme {_show(scheme)}; known: builtin, torchvision, file")
        return uri

    @field_validator("dataset")
    @classmethod
    def _check_dataset(cls, uri: str) -> str:
        scheme, sep, rest = uri.partition(":")
        if not sep or not rest:
            raise _invalid(f"{_show(uri)} has no scheme: use builtin:<name> or imagefolder:<path>")
        if scheme == "builtin":
            if rest not in BUILTIN_DATASETS:
                raise _invalid(
                    f"unknown built-in dataset {_show(rest)}; known: " + ", ".join(BUILTIN_DATASETS)
                )
        elif scheme != "imagefolder":
            raise _invalid(f"unknown scheme {_show(scheme)}; known: builtin, imagefolder")
        return uri

    @field_validator("source_weights")
    @classmethod
    def _check_weights(cls, path: str | None) -> str | None:
        if path is not None and not path.endswith(WEIGHT_SUFFIXES):
            raise _invalid(
                "source_weights must end in " + ", ".join(WEIGHT_SUFFIXES) + f", got {_show(path)}"
            )
        return path

    # -- checks across fields -------------------------------------------------

    @model_validator(mode="after")
    def _check_consistency(self) -> StudySpec:
        problems = _Problems()
        self._check_source(problems)
        self._check_objectives(problems)
        self._check_search_space(problems)
        self._check_fixed_params(problems)
        if not any(loc[0] == "search_space" for loc, _, _ in problems):
            self._check_sampler(problems)
        self._check_pruner(problems)
        problems.raise_if_any("StudySpec")
        if self.pruner is None:
            multi = len(self.objectives) > 1
            self.pruner = NopPruner(type="none") if multi else HyperbandPruner(type="hyperband")
        return self

    def _check_source(self, problems: _Problems) -> None:
        scheme = self.source_model.partition(":")[0]
        if scheme == "torchvision" and self.source_weights is None:
            problems.add(
                ("source_weights",),
                "torchvision models need source_weights: a local .safetensors or .pt "
                "state dict (nothing is downloaded)",
            )
        if scheme != "torchvision" and self.source_weights is not None:
            problems.add(
                ("source_weights",),
                "source_weights only applies to torchvision:<arch> models",
                self.source_weights,
            )

    def _check_objectives(self, problems: _Problems) -> None:
        seen: set[str] = set()
        for i, objective in enumerate(self.objectives):
            if objective.metric in seen:
                problems.add(
                    ("objectives", i, "metric"),
                    f"metric {objective.metric!r} appears twice",
                    objective.metric,
                )
            seen.add(objective.metric)
        if "robustness" in seen and self.robustness.is_empty():
            problems.add(
                ("robustness",), "the robustness objective needs at least one perturbation"
            )

    def _check_search_space(self, problems: _Problems) -> None:
        for name, dist in self.search_space.items():
            loc: Loc = ("search_space", name)
            known = KNOWN_PARAMS.get(name)
            if known is None:
                problems.add(loc, _unknown_param(name), name)
            elif isinstance(dist, CategoricalParam):
                if known.kind == "float":
                    dist.choices = [_as_float(c) for c in dist.choices]
                for j, choice in enumerate(dist.choices):
                    if (why := known.problem_with(choice)) is not None:
                        problems.add((*loc, "choices", j), f"{name} {why}", choice)
            elif known.kind == "categorical":
                choices = ", ".join(known.choices or ())
                problems.add(
                    (*loc, "type"),
                    f"{name} is categorical: use type: categorical with choices from {choices}",
                    dist.type,
                )
            elif known.kind == "int" and isinstance(dist, FloatParam):
                problems.add(
                    (*loc, "type"), f"{name} is an integer: use type: int or categorical", "float"
                )
            else:
                for bound in ("low", "high"):
                    value = getattr(dist, bound)
                    if (why := known.problem_with(value)) is not None:
                        problems.add((*loc, bound), f"{name} {why}", value)

    def _check_fixed_params(self, problems: _Problems) -> None:
        for name, value in self.fixed_params.items():
            loc: Loc = ("fixed_params", name)
            known = KNOWN_PARAMS.get(name)
            if known is None:
                problems.add(loc, _unknown_param(name), name)
            elif name in self.search_space:
                problems.add(
                    loc,
                    f"{name} is both searched and fixed: drop it from search_space or fixed_params",
                    value,
                )
            elif (why := known.problem_with(value)) is not None:
                problems.add(loc, f"{name} {why}", value)
            else:
                self.fixed_params[name] = known.coerce(value)

    def _check_sampler(self, problems: _Problems) -> None:
        sampler = self.sampler
        loc: Loc = ("sampler", "type")
        if isinstance(sampler, CmaEsSampler):
            numeric = [d for d in self.search_space.values() if not isinstance(d, CategoricalParam)]
            if len(self.objectives) > 1:
                problems.add(loc, "cmaes handles one objective only; use nsga2, tpe or gp", "cmaes")
            elif len(numeric) < 2:
                problems.add(
                    loc,
                    "cmaes needs at least two float or int parameters in search_space; "
                    "use tpe or gp for this space",
                    "cmaes",
                )
        elif isinstance(sampler, GridSampler):
            for name, dist in self.search_space.items():
                if isinstance(dist, FloatParam) and dist.step is None:
                    problems.add(
                        loc,
                        f"grid needs a finite space: give search_space.{name} a step or "
                        "make it categorical",
                        "grid",
                    )
                    return
            if (size := grid_size(self)) > MAX_GRID_POINTS:
                problems.add(
                    loc,
                    f"the grid has {size} points, more than {MAX_GRID_POINTS}: use fewer "
                    "values or another sampler",
                    "grid",
                )

    def _check_pruner(self, problems: _Problems) -> None:
        pruner = self.pruner
        if pruner is None or isinstance(pruner, NopPruner):
            return
        if len(self.objectives) > 1:
            problems.add(
                ("pruner", "type"),
                "Optuna cannot prune multi-objective studies: use pruner type none "
                "(or leave the pruner out)",
                pruner.type,
            )
        elif isinstance(pruner, HyperbandPruner):
            max_resource = pruner.max_resource or self.budget.epochs
            if pruner.min_resource > max_resource:
                problems.add(
                    ("pruner", "min_resource"),
                    f"min_resource ({pruner.min_resource}) exceeds max_resource "
                    f"({max_resource} epochs)",
                    pruner.min_resource,
                )

    # -- conveniences ---------------------------------------------------------

    @property
    def metric_names(self) -> list[str]:
        return [o.metric for o in self.objectives]

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    def params_with_defaults(self, params: dict[str, Any]) -> dict[str, Any]:
        """Sampled params completed by fixed_params and the engine's defaults."""
        full = {name: p.default for name, p in KNOWN_PARAMS.items()}
        full.update(self.fixed_params)
        full.update(params)
        return full

    @classmethod
    def from_text(cls, text: str) -> StudySpec:
        """Parse a spec from JSON or YAML text; raises SpecError with field paths."""
        try:
            data = json.loads(text)
        except ValueError:
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise SpecError(
                    [{"path": "", "message": f"not valid JSON or YAML: {exc}"}]
                ) from exc
        if not isinstance(data, dict):
            raise SpecError([{"path": "", "message": "a spec must be a mapping of fields"}])
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise SpecError.from_validation_error(exc) from exc


def _unknown_param(name: str) -> str:
    return f"unknown hyperparameter {_show(name)}; known: " + ", ".join(KNOWN_PARAMS)


def _as_float(value: ParamValue) -> ParamValue:
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _grid_count(dist: FloatParam | IntParam | CategoricalParam) -> int:
    if isinstance(dist, CategoricalParam):
        return len(dist.choices)
    if dist.step is None:
        raise ValueError("a continuous range has no grid")
    return math.floor((dist.high - dist.low) / dist.step + 1e-9) + 1


def grid_size(spec: StudySpec) -> int:
    """Number of points of a finite search space (raises ValueError for a continuous one)."""
    return math.prod(_grid_count(dist) for dist in spec.search_space.values())


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
            values[name] = [round(dist.low + i * dist.step, 12) for i in range(_grid_count(dist))]
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
                    "message": f"{_show(name)} is not in the study's search "
                    "space; searched: " + ", ".join(spec.search_space),
                }
            )
            continue
        why = _problem_in_distribution(dist, value)
        if why is not None:
            errors.append({"path": path, "message": f"{name} {why}"})
            continue
        out[name] = _canonical(dist, value)
    if errors:
        raise SpecError(errors)
    return out


def _choice_key(value: Any) -> tuple[str, Any]:
    """Compare choices as JSON does: 1 and 1.0 are the same number, true is not 1."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", float(value))
    return (type(value).__name__, value)


def _problem_in_distribution(
    dist: FloatParam | IntParam | CategoricalParam, value: Any
) -> str | None:
    if isinstance(dist, CategoricalParam):
        if _choice_key(value) not in {_choice_key(c) for c in dist.choices}:
            choices = ", ".join(repr(c) for c in dist.choices)
            return f"must be one of {choices}, got {_show(value)}"
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return f"must be a finite number, got {_show(value)}"
    if isinstance(dist, IntParam) and not float(value).is_integer():
        return f"must be an integer, got {_show(value)}"
    if not dist.low <= value <= dist.high:
        return f"must be in [{dist.low:g}, {dist.high:g}], got {_show(value)}"
    if dist.step is not None:
        k = (value - dist.low) / dist.step
        if abs(k - round(k)) > 1e-8:
            return f"must be low + a multiple of step {dist.step:g}, got {_show(value)}"
    return None


def _canonical(dist: FloatParam | IntParam | CategoricalParam, value: Any) -> Any:
    if isinstance(dist, IntParam):
        return int(value)
    if isinstance(dist, FloatParam):
        return float(value)
    key = _choice_key(value)
    return next(c for c in dist.choices if _choice_key(c) == key)
