"""What a trial is scored on: the metrics of the objectives, the robustness suite
behind `robustness`, and the compression applied before the size and speed metrics.

Public names are re-exported by `tunefleet.spec`; import them from there.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import Field, model_validator

from tunefleet._spec_base import Problems, SpecModel

METRICS: dict[str, Literal["maximize", "minimize"]] = {
    "accuracy": "maximize",  # clean top-1 on the held-out test split
    "robustness": "maximize",  # mean top-1 under the robustness suite
    "latency_ms": "minimize",  # inference latency of one batch, after compression
    "params": "minimize",  # parameter count, after compression
    "size_mb": "minimize",  # serialized size, after compression
}
"""Metrics a trial reports, with the direction used when an objective names none."""

Corruption = Literal["blur", "contrast", "brightness", "pixelate", "shot_noise"]
CORRUPTIONS: tuple[str, ...] = get_args(Corruption)
"""Common corruptions of the robustness suite; the engine implements exactly these."""


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
