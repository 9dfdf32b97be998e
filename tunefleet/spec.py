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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from tunefleet._spec_base import (
    Loc,
    Problems,
    SpecError,
    SpecModel,
    clean_loc,
    custom_error,
    field_path,
    show_value,
)
from tunefleet._spec_search import (
    CategoricalParam,
    CmaEsSampler,
    FloatParam,
    GPSampler,
    GridSampler,
    HyperbandPruner,
    IntParam,
    MedianPruner,
    NopPruner,
    NSGA2Sampler,
    ParamValue,
    PrunerSpec,
    QMCSampler,
    RandomSampler,
    SamplerSpec,
    SearchParam,
    SuccessiveHalvingPruner,
    TPESampler,
    canonical_value,
    grid_count,
    problem_in_distribution,
)
from tunefleet._spec_sources import (
    BUILTIN_MODELS,
    WEIGHT_SUFFIXES,
    SourceWeights,
    source_problem,
    weights_for,
    weights_problem,
)

__all__ = [
    "BUILTIN_DATASETS",
    "BUILTIN_MODELS",
    "CORRUPTIONS",
    "KNOWN_PARAMS",
    "METRICS",
    "OBSERVING_SAMPLERS",
    "PGD",
    "SOURCE_PARAM",
    "Budget",
    "CategoricalParam",
    "CmaEsSampler",
    "Compression",
    "Corruption",
    "FloatParam",
    "GPSampler",
    "GridSampler",
    "HyperbandPruner",
    "IntParam",
    "KnownParam",
    "MedianPruner",
    "NSGA2Sampler",
    "NopPruner",
    "Objective",
    "ParamValue",
    "PrunerSpec",
    "QMCSampler",
    "RandomSampler",
    "Robustness",
    "SamplerSpec",
    "SearchParam",
    "SpecError",
    "StudySpec",
    "SuccessiveHalvingPruner",
    "TPESampler",
    "WarmStart",
    "clean_loc",
    "field_path",
    "grid_size",
    "grid_values",
    "validate_params",
]

# --------------------------------------------------------------------------
# Vocabulary shared with the workers
# --------------------------------------------------------------------------


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
                return f"must be {self.bounds_text()}, got {show_value(value)}"
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"must be a number ({self.kind}), got {show_value(value)}"
        if self.kind == "int" and not float(value).is_integer():
            return f"must be an integer, got {show_value(value)}"
        if not math.isfinite(value):
            return f"must be finite, got {show_value(value)}"
        assert self.min is not None and self.max is not None
        too_low = value <= self.min if self.min_open else value < self.min
        too_high = value >= self.max if self.max_open else value > self.max
        if too_low or too_high:
            return f"must be {self.bounds_text()}, got {show_value(value)}"
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
    "weight_decay": KnownParam(
        "float", 0.0, "weight decay (decoupled with adamw, L2 otherwise)", min=0.0, max=10.0
    ),
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

BUILTIN_DATASETS = ("digits-5to9", "digits-shifted", "digits-shifted-s1")
Corruption = Literal["blur", "contrast", "brightness", "pixelate", "shot_noise"]
CORRUPTIONS: tuple[str, ...] = get_args(Corruption)
"""Common corruptions of the robustness suite; the engine implements exactly these."""
MAX_GRID_POINTS = 100_000
NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
SOURCE_PARAM = "source_model"
"""The search-space name under which the source model itself is searched."""

# --------------------------------------------------------------------------
# The spec
# --------------------------------------------------------------------------


class Objective(SpecModel):
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


class PGD(SpecModel):
    """Projected gradient descent attack settings."""

    eps: float = Field(0.03, gt=0, le=1, description="L-inf radius, in [0, 1] pixel units.")
    steps: int = Field(5, ge=1, le=100, description="Attack iterations.")


class Robustness(SpecModel):
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
    corruptions: list[Corruption] = Field(
        default_factory=list,
        max_length=len(CORRUPTIONS),
        description="Common corruptions: " + ", ".join(CORRUPTIONS) + ".",
    )

    @model_validator(mode="after")
    def _distinct_components(self) -> Robustness:
        # Each component is scored under its name: two with one name would count twice.
        problems = Problems()
        for field, names in (
            ("gaussian_sigma", [f"{s:g}" for s in self.gaussian_sigma]),
            ("fgsm_eps", [f"{e:g}" for e in self.fgsm_eps]),
            ("corruptions", list(self.corruptions)),
        ):
            for i, name in enumerate(names):
                if name in names[:i]:
                    problems.add((field, i), f"{name} appears twice", getattr(self, field)[i])
        problems.raise_if_any("Robustness")
        return self

    def is_empty(self) -> bool:
        return not (self.gaussian_sigma or self.fgsm_eps or self.pgd or self.corruptions)

    def component_names(self) -> list[str]:
        """The perturbations in the order the engine scores them, named as it reports them."""
        names = [f"gaussian_{s:g}" for s in self.gaussian_sigma]
        names += [f"fgsm_{e:g}" for e in self.fgsm_eps]
        if self.pgd is not None:
            names.append(f"pgd_{self.pgd.eps:g}")
        return names + list(self.corruptions)


class Compression(SpecModel):
    """Compression applied before measuring params, size_mb and latency_ms."""

    quantize_int8: bool = Field(False, description="Dynamic int8 quantization of linear layers.")
    prune_amount: float = Field(
        0.0, ge=0, le=0.95, description="Fraction of weights removed by magnitude pruning."
    )

    @property
    def active(self) -> bool:
        return self.quantize_int8 or self.prune_amount > 0


class Budget(SpecModel):
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
    max_failed_trials: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="Trials that may fail for good (not re-run) before the study is failed; "
        "default: max_trials, at most 10.",
    )

    def failed_trials_cap(self) -> int:
        """How many trials may fail for good before the study fails."""
        if self.max_failed_trials is not None:
            return self.max_failed_trials
        return min(10, self.max_trials)


StudyRef = Annotated[str, Field(pattern=NAME_PATTERN)] | Annotated[int, Field(ge=1)]


OBSERVING_SAMPLERS = ("tpe", "gp")
"""Samplers that model every finished trial, and so can start from past ones."""


class WarmStart(SpecModel):
    """Past studies whose best configurations run first in a new study, and whose
    completed trials the sampler may read as observations."""

    studies: Literal["auto"] | list[StudyRef] = Field(
        description="Study names or ids of your own studies, or `auto`: your past studies with "
        "the same source model and the same dataset fingerprint, newest first.",
        examples=[["digits-shifted-s1"], "auto"],
    )
    top_k: int = Field(
        5,
        ge=0,
        le=100,
        description="How many of their best completed configurations to enqueue (by this "
        "study's first objective; the Pareto front for several objectives); 0 (with observe) "
        "enqueues none.",
    )
    observe: bool = Field(
        False,
        description="Also give the sampler (tpe or gp) their completed trials, projected onto "
        "this search space, as observations: it models them from its first ask instead of "
        "sampling at random first. They are not trials of this study and use none of its "
        "budget.",
    )

    @field_validator("studies", mode="before")
    @classmethod
    def _check_studies(cls, studies: Any) -> Any:
        # Checked here so that a mistake reads as one message, not one per union member.
        if isinstance(studies, str):
            if studies != "auto":
                raise custom_error(
                    f"{show_value(studies)}: use auto or a list of study names or ids"
                )
            return studies
        if not isinstance(studies, list) or not 1 <= len(studies) <= 20:
            raise custom_error("use auto or a list of 1 to 20 study names or ids")
        for i, ref in enumerate(studies):
            is_id = isinstance(ref, int) and not isinstance(ref, bool) and ref >= 1
            is_name = isinstance(ref, str) and re.match(NAME_PATTERN, ref) is not None
            if not (is_id or is_name):
                raise custom_error(
                    f"item {i} ({show_value(ref)}) is neither a study name (lowercase letters, "
                    "digits and '-') nor a study id (a positive integer)"
                )
        if len(set(map(str, studies))) != len(studies):
            raise custom_error("a study is named twice")
        return studies


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's error in one line: what is wrong, and where (1-based line and column)."""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


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


class StudySpec(SpecModel):
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
        + "), timm:<name>, torchvision:<arch> (both need source_weights) or file:<path> ("
        + ", ".join(WEIGHT_SUFFIXES)
        + "). May be left out when search_space.source_model searches it (the first "
        "choice is then the default).",
        examples=["builtin:digits-cnn", "timm:resnet18", "torchvision:resnet18"],
    )
    source_weights: SourceWeights = Field(
        None,
        description="Weights of a timm or torchvision source: pretrained (the library's own "
        "download, cached on the worker; `tunefleet prefetch` fills the cache), a torchvision "
        "weights name (IMAGENET1K_V2) or a local file ("
        + ", ".join(WEIGHT_SUFFIXES)
        + "). When source_model is searched: a map from each choice to its weights.",
        examples=["pretrained", {"timm:resnet18": "pretrained", "torchvision:resnet18": "DEFAULT"}],
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
        max_length=len(KNOWN_PARAMS) + 1,
        description="Hyperparameters to search, by name: "
        + ", ".join(KNOWN_PARAMS)
        + "; and source_model (categorical over source model URIs) to search the backbone.",
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
    warm_start: WarmStart | None = Field(
        None,
        description="Enqueue the best configurations of past studies first, projected onto "
        "this search space.",
    )

    # -- field checks ---------------------------------------------------------

    @model_validator(mode="before")
    @classmethod
    def _default_source_model(cls, data: Any) -> Any:
        """A searched source model needs no `source_model`: the first choice stands in."""
        if isinstance(data, dict) and "source_model" not in data:
            searched = (data.get("search_space") or {}).get(SOURCE_PARAM)
            choices = searched.get("choices") if isinstance(searched, dict) else None
            if isinstance(choices, list) and choices and isinstance(choices[0], str):
                return {**data, "source_model": choices[0]}
        return data

    @field_validator("source_model")
    @classmethod
    def _check_source_model(cls, uri: str) -> str:
        if (why := source_problem(uri)) is not None:
            raise custom_error(why)
        return uri

    @field_validator("dataset")
    @classmethod
    def _check_dataset(cls, uri: str) -> str:
        scheme, sep, rest = uri.partition(":")
        if not sep or not rest:
            raise custom_error(
                f"{show_value(uri)} has no scheme: use builtin:<name> or imagefolder:<path>"
            )
        if scheme == "builtin":
            if rest not in BUILTIN_DATASETS:
                raise custom_error(
                    f"unknown built-in dataset {show_value(rest)}; known: "
                    + ", ".join(BUILTIN_DATASETS)
                )
        elif scheme != "imagefolder":
            raise custom_error(f"unknown scheme {show_value(scheme)}; known: builtin, imagefolder")
        return uri

    # -- checks across fields -------------------------------------------------

    @model_validator(mode="after")
    def _check_consistency(self) -> StudySpec:
        problems = Problems()
        self._check_source(problems)
        self._check_objectives(problems)
        self._check_search_space(problems)
        self._check_fixed_params(problems)
        if not any(loc[0] == "search_space" for loc, _, _ in problems):
            self._check_sampler(problems)
        self._check_pruner(problems)
        self._check_warm_start(problems)
        problems.raise_if_any("StudySpec")
        if self.pruner is None:
            multi = len(self.objectives) > 1
            self.pruner = NopPruner(type="none") if multi else HyperbandPruner(type="hyperband")
        return self

    def _check_source(self, problems: Problems) -> None:
        searched = self.search_space.get(SOURCE_PARAM)
        weights = self.source_weights
        if searched is None:
            if isinstance(weights, dict):
                problems.add(
                    ("source_weights",),
                    "a map of weights applies when search_space.source_model searches the "
                    "source model; give one value for " + self.source_model,
                )
            elif (why := weights_problem(self.source_model, weights)) is not None:
                problems.add(("source_weights",), why, weights)
            return
        loc: Loc = ("search_space", SOURCE_PARAM)
        if not isinstance(searched, CategoricalParam):
            problems.add((*loc, "type"), "source_model is searched as type: categorical", "")
            return
        choices = [c for c in searched.choices if isinstance(c, str)]
        for j, choice in enumerate(searched.choices):
            if (why := source_problem(choice)) is not None:
                problems.add((*loc, "choices", j), why, choice)
        if self.source_model not in choices:
            problems.add(
                ("source_model",),
                "with source_model searched, source_model (the default) must be one of "
                "its choices, or left out",
                self.source_model,
            )
        for key in weights if isinstance(weights, dict) else ():
            if key not in choices:
                problems.add(
                    ("source_weights", key), "not one of search_space.source_model.choices"
                )
        for choice in choices:
            if source_problem(choice) is not None:
                continue
            why = weights_problem(choice, weights_for(weights, choice))
            if why is not None:
                at: Loc = (
                    ("source_weights", choice) if isinstance(weights, dict) else ("source_weights",)
                )
                problems.add(at, why, weights_for(weights, choice))

    def _check_objectives(self, problems: Problems) -> None:
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

    def _check_search_space(self, problems: Problems) -> None:
        for name, dist in self.search_space.items():
            loc: Loc = ("search_space", name)
            known = KNOWN_PARAMS.get(name)
            if name == SOURCE_PARAM:
                continue  # checked with the source (_check_source)
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

    def _check_fixed_params(self, problems: Problems) -> None:
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

    def _check_sampler(self, problems: Problems) -> None:
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

    def _check_pruner(self, problems: Problems) -> None:
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

    def _check_warm_start(self, problems: Problems) -> None:
        warm = self.warm_start
        if warm is None:
            return
        if warm.observe and self.sampler.type not in OBSERVING_SAMPLERS:
            problems.add(
                ("warm_start", "observe"),
                f"sampler {self.sampler.type} does not model past trials: observe works with "
                "sampler " + " or ".join(OBSERVING_SAMPLERS) + "; or set observe: false",
                True,
            )
        if warm.top_k == 0 and not warm.observe:
            problems.add(
                ("warm_start", "top_k"),
                "top_k 0 enqueues nothing: give top_k >= 1, or set observe: true",
                0,
            )

    # -- conveniences ---------------------------------------------------------

    @property
    def metric_names(self) -> list[str]:
        return [o.metric for o in self.objectives]

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    def trial_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Every known hyperparameter of a trial: sampled `params` over fixed_params over the
        defaults, each checked against its bounds and typed (int, float or str).

        Raises SpecError with paths like `params.lr` for an unknown name or a bad value.
        """
        params = {k: v for k, v in params.items() if k != SOURCE_PARAM}
        errors = [
            {"path": f"params.{name}", "message": why}
            for name, value in params.items()
            if (why := _param_problem(name, value)) is not None
        ]
        if errors:
            raise SpecError(errors)
        merged = {name: p.default for name, p in KNOWN_PARAMS.items()}
        merged.update(self.fixed_params)
        merged.update(params)
        return {name: KNOWN_PARAMS[name].coerce(value) for name, value in merged.items()}

    def source_of(self, params: Mapping[str, Any]) -> tuple[str, str | None]:
        """The source model of a trial (sampled when searched) and its weights."""
        uri = params.get(SOURCE_PARAM, self.source_model)
        if SOURCE_PARAM in params and (not isinstance(uri, str) or uri not in self.source_models()):
            raise SpecError(
                [
                    {
                        "path": f"params.{SOURCE_PARAM}",
                        "message": f"{show_value(uri)} is not one of the searched source models",
                    }
                ]
            )
        return uri, weights_for(self.source_weights, uri)

    def source_models(self) -> list[str]:
        """Every source model a trial of this study may use."""
        searched = self.search_space.get(SOURCE_PARAM)
        if isinstance(searched, CategoricalParam):
            return [c for c in searched.choices if isinstance(c, str)]
        return [self.source_model]

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
                    [{"path": "", "message": f"not valid JSON or YAML: {_yaml_problem(exc)}"}]
                ) from exc
        if not isinstance(data, dict):
            raise SpecError([{"path": "", "message": "a spec must be a mapping of fields"}])
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise SpecError.from_validation_error(exc) from exc


def _param_problem(name: str, value: Any) -> str | None:
    known = KNOWN_PARAMS.get(name)
    if known is None:
        return _unknown_param(name)
    why = known.problem_with(value)
    return None if why is None else f"{name} {why}"


def _unknown_param(name: str) -> str:
    return f"unknown hyperparameter {show_value(name)}; known: " + ", ".join(KNOWN_PARAMS)


def _as_float(value: ParamValue) -> ParamValue:
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


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
