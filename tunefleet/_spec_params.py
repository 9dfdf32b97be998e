"""The hyperparameters a spec may search or fix: the engine's vocabulary, checked here.

Public names are re-exported by `tunefleet.spec`; import them from there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from tunefleet._spec_base import Loc, Problems, show_value
from tunefleet._spec_search import CategoricalParam, FloatParam, ParamValue
from tunefleet._spec_sources import SOURCE_PARAM

if TYPE_CHECKING:
    from tunefleet.spec import StudySpec


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


def check_search_space(spec: StudySpec, problems: Problems) -> None:
    """Every searched hyperparameter is known, of its kind, and within its bounds."""
    for name, dist in spec.search_space.items():
        loc: Loc = ("search_space", name)
        known = KNOWN_PARAMS.get(name)
        if name == SOURCE_PARAM:
            continue  # checked with the source (check_source)
        if known is None:
            problems.add(loc, unknown_param(name), name)
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


def check_fixed_params(spec: StudySpec, problems: Problems) -> None:
    """Every fixed hyperparameter is known, not also searched, and valid; typed in place."""
    for name, value in spec.fixed_params.items():
        loc: Loc = ("fixed_params", name)
        known = KNOWN_PARAMS.get(name)
        if known is None:
            problems.add(loc, unknown_param(name), name)
        elif name in spec.search_space:
            problems.add(
                loc,
                f"{name} is both searched and fixed: drop it from search_space or fixed_params",
                value,
            )
        elif (why := known.problem_with(value)) is not None:
            problems.add(loc, f"{name} {why}", value)
        else:
            spec.fixed_params[name] = known.coerce(value)


def param_problem(name: str, value: Any) -> str | None:
    """Why ``value`` is not valid for the hyperparameter ``name``, or None when it is."""
    known = KNOWN_PARAMS.get(name)
    if known is None:
        return unknown_param(name)
    why = known.problem_with(value)
    return None if why is None else f"{name} {why}"


def unknown_param(name: str) -> str:
    """The message for a name that is not a known hyperparameter."""
    return f"unknown hyperparameter {show_value(name)}; known: " + ", ".join(KNOWN_PARAMS)


def _as_float(value: ParamValue) -> ParamValue:
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value
