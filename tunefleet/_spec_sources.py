"""Source models and their weights as a spec names them, checked without torch or timm.

A source model is `builtin:<name>`, `timm:<name>[.<tag>]`, `torchvision:<arch>`
or `file:<path>`. Names are checked against tunefleet/_spec_backbones.py, a list
generated from the libraries by scripts/refresh_backbone_names.py, so that the
API process answers 422 for an unknown name without importing either library.

`source_weights` for timm and torchvision is `pretrained` (the library's own
download, cached on the worker), a local file, or, for torchvision, the name of
one of the architecture's weights (`IMAGENET1K_V2`). When `source_model` is
searched, `source_weights` maps each choice to its weights.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from tunefleet._spec_backbones import TIMM_MODELS, TORCHVISION_WEIGHTS
from tunefleet._spec_base import Loc, Problems
from tunefleet._spec_search import CategoricalParam

if TYPE_CHECKING:
    from tunefleet.spec import StudySpec

BUILTIN_MODELS = ("digits-cnn", "glyphs-cnn")
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")
FAMILIES = ("builtin", "timm", "torchvision", "file")
PRETRAINED = "pretrained"
SOURCE_PARAM = "source_model"
"""The search-space name under which the source model itself is searched."""
_TIMM_TAG = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)?$")

SourceWeights = str | dict[str, str] | None


def source_problem(uri: object) -> str | None:
    """Why `uri` is not a source model this release knows, or None when it is."""
    if not isinstance(uri, str):
        return f"a source model is a string such as timm:resnet18, got {uri!r}"
    family, sep, name = uri.partition(":")
    if not sep or not name:
        return (
            f"{uri!r} has no family: use builtin:<name>, timm:<name>, torchvision:<arch> "
            "or file:<path>"
        )
    if family == "builtin":
        if name not in BUILTIN_MODELS:
            return f"unknown built-in model {name!r}; known: " + ", ".join(BUILTIN_MODELS)
    elif family == "timm":
        if not _TIMM_TAG.match(name) or name.partition(".")[0] not in TIMM_MODELS:
            return (
                f"timm has no model {name!r}; list them with `tunefleet models --family timm "
                "PATTERN`"
            )
    elif family == "torchvision":
        if name not in TORCHVISION_WEIGHTS:
            return (
                f"torchvision has no classification model {name!r}; list them with "
                "`tunefleet models --family torchvision`"
            )
    elif family == "file":
        if not name.endswith(WEIGHT_SUFFIXES):
            return f"a file: model must end in {', '.join(WEIGHT_SUFFIXES)}, got {name!r}"
    else:
        return f"unknown family {family!r}; known: " + ", ".join(FAMILIES)
    return None


def weights_problem(uri: str, weights: str | None) -> str | None:
    """Why `weights` do not suit the source model `uri`, or None when they do."""
    family, _, name = uri.partition(":")
    if family in ("builtin", "file"):
        if weights is not None:
            return f"{uri} carries its own weights: give it no source_weights"
        return None
    if weights is None:
        extra = ", a weights name of the architecture" if family == "torchvision" else ""
        return (
            f"{uri} needs source_weights: {PRETRAINED} (the library's download, cached on "
            f"the worker){extra} or a local file ({', '.join(WEIGHT_SUFFIXES)})"
        )
    if weights == PRETRAINED or weights.endswith(WEIGHT_SUFFIXES):
        return None
    if family == "torchvision":
        known = TORCHVISION_WEIGHTS.get(name, ())
        if weights in (*known, "DEFAULT"):
            return None
        return (
            f"{weights!r} is not a weights name of torchvision {name} (known: "
            + ", ".join((*known, "DEFAULT"))
            + f"); or use {PRETRAINED} or a local file"
        )
    return (
        f"source_weights for {uri} must be {PRETRAINED} or a local file "
        f"({', '.join(WEIGHT_SUFFIXES)}), got {weights!r}"
    )


def spec_backbones(spec: dict) -> dict[str, str | None]:
    """The source models a study's trials run on, from its JSON spec: its searched
    `source_model` choices, else its one source model; each with its weights."""
    searched = (spec.get("search_space") or {}).get(SOURCE_PARAM) or {}
    choices = searched.get("choices") if isinstance(searched, dict) else None
    weights = spec.get("source_weights")
    return {model: weights_for(weights, model) for model in choices or [spec.get(SOURCE_PARAM)]}


def weights_for(weights: SourceWeights, uri: str) -> str | None:
    """The weights of one source model: the map's entry for it, or the one value."""
    if isinstance(weights, dict):
        return weights.get(uri)
    return weights


def check_source(spec: StudySpec, problems: Problems) -> None:
    """source_model, a searched source_model and source_weights, against each other."""
    searched = spec.search_space.get(SOURCE_PARAM)
    weights = spec.source_weights
    if searched is None:
        if isinstance(weights, dict):
            problems.add(
                ("source_weights",),
                "a map of weights applies when search_space.source_model searches the "
                "source model; give one value for " + spec.source_model,
            )
        elif (why := weights_problem(spec.source_model, weights)) is not None:
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
    if spec.source_model not in choices:
        problems.add(
            ("source_model",),
            "with source_model searched, source_model (the default) must be one of "
            "its choices, or left out",
            spec.source_model,
        )
    for key in weights if isinstance(weights, dict) else ():
        if key not in choices:
            problems.add(("source_weights", key), "not one of search_space.source_model.choices")
    for choice in choices:
        if source_problem(choice) is not None:
            continue
        why = weights_problem(choice, weights_for(weights, choice))
        if why is not None:
            at: Loc = (
                ("source_weights", choice) if isinstance(weights, dict) else ("source_weights",)
            )
            problems.add(at, why, weights_for(weights, choice))
