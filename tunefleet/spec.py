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

The parts of the spec and their checks live beside it: _spec_params.py (the
known hyperparameters), _spec_search.py (distributions, samplers, pruners,
grids), _spec_objectives.py (metrics, robustness, compression),
_spec_sources.py (source models and weights), _spec_warm.py (warm starts).
Import every public name from here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from tunefleet._spec_base import (
    NAME_PATTERN,
    Problems,
    SpecError,
    SpecModel,
    clean_loc,
    custom_error,
    field_path,
    show_value,
)
from tunefleet._spec_objectives import (
    CORRUPTIONS,
    METRICS,
    PGD,
    Compression,
    Corruption,
    Objective,
    Robustness,
)
from tunefleet._spec_params import (
    KNOWN_PARAMS,
    KnownParam,
    check_fixed_params,
    check_search_space,
    param_problem,
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
    check_pruner,
    check_sampler,
    grid_size,
    grid_values,
    validate_params,
)
from tunefleet._spec_sources import (
    BUILTIN_MODELS,
    SOURCE_PARAM,
    WEIGHT_SUFFIXES,
    SourceWeights,
    check_source,
    source_problem,
    spec_backbones,
    weights_for,
)
from tunefleet._spec_warm import OBSERVING_SAMPLERS, WarmStart, check_warm_start

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
    "spec_backbones",
    "validate_params",
]

BUILTIN_DATASETS = (
    "digits-5to9",
    "digits-shifted",
    "digits-shifted-s1",
    "glyphs",
    "glyphs-s1",
)


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
        check_source(self, problems)
        self._check_objectives(problems)
        check_search_space(self, problems)
        check_fixed_params(self, problems)
        if not any(loc[0] == "search_space" for loc, _, _ in problems):
            check_sampler(self, problems)
        check_pruner(self, problems)
        check_warm_start(self, problems)
        problems.raise_if_any("StudySpec")
        if self.pruner is None:
            multi = len(self.objectives) > 1
            self.pruner = NopPruner(type="none") if multi else HyperbandPruner(type="hyperband")
        return self

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
            if (why := param_problem(name, value)) is not None
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
