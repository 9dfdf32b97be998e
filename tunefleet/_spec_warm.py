"""Warm starts: the past studies a spec names, and what it may ask of them.

Public names are re-exported by `tunefleet.spec`; import them from there.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, field_validator

from tunefleet._spec_base import NAME_PATTERN, Problems, SpecModel, custom_error, show_value

if TYPE_CHECKING:
    from tunefleet.spec import StudySpec


StudyRef = Annotated[str, Field(pattern=NAME_PATTERN)] | Annotated[int, Field(ge=1)]


OBSERVING_SAMPLERS = ("tpe", "gp")
"""Samplers that model every finished trial, and so can start from past ones."""


class WarmStart(SpecModel):
    """Past studies whose best configurations run first in a new study, and whose
    completed trials the sampler may read as observations."""

    studies: Literal["auto"] | list[StudyRef] = Field(
        description="Study names or ids of your own studies, or `auto`: your past studies sharing "
        "a backbone with this one (the same source model and weights, or an overlapping "
        "searched choice) and the same dataset fingerprint, newest first.",
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


def check_warm_start(spec: StudySpec, problems: Problems) -> None:
    """warm_start against the rest of the spec: observe needs a sampler that models past trials."""
    warm = spec.warm_start
    if warm is None:
        return
    if warm.observe and spec.sampler.type not in OBSERVING_SAMPLERS:
        problems.add(
            ("warm_start", "observe"),
            f"sampler {spec.sampler.type} does not model past trials: observe works with "
            "sampler " + " or ".join(OBSERVING_SAMPLERS) + "; or set observe: false",
            True,
        )
    if warm.top_k == 0 and not warm.observe:
        problems.add(
            ("warm_start", "top_k"),
            "top_k 0 enqueues nothing: give top_k >= 1, or set observe: true",
            0,
        )
