"""Warm start: a new study first runs the best configurations of past studies.

At creation, `resolve_sources` finds the past studies a spec's `warm_start`
names (only the owner's own; a missing one is an invalid spec, so that the
answer never tells whether another owner has a study of that name), and
`enqueue_warm_start` ranks their completed trials by the new study's
objectives, projects the best onto the new search space and enqueues them,
each marked with where it came from (`warm_start_from: study/number`).

`auto` picks the owner's past studies that share a backbone with the new one
(the same source model and weights, or one of its searched choices) and whose
dataset has the fingerprint last reported for the new study's dataset: the
worker reports the sha256 of a dataset's content with every trial it
completes, so two URIs of the same data match and a folder whose files
changed does not.

A configuration is about the backbone it ran on: a past trial on a backbone the
new study does not use is left out, and when the new study searches
`source_model`, a past trial of a study with one fixed source model is enqueued
on that model (`project_trial`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.orm import Session

from service import optuna_store
from service.errors import InvalidSpec
from service.models import StudyRecord
from tunefleet.protocol import DATASET_FINGERPRINT_ATTR
from tunefleet.spec import (
    SOURCE_PARAM,
    CategoricalParam,
    FloatParam,
    IntParam,
    SpecError,
    StudySpec,
    spec_backbones,
    validate_params,
)

__all__ = [
    "WARM_START_ATTR",
    "WarmStartTrial",
    "auto_sources",
    "best_configurations",
    "completed_trials",
    "dataset_fingerprint",
    "enqueue_warm_start",
    "objective_values",
    "project_params",
    "project_trial",
    "resolve_sources",
]

WARM_START_ATTR = "warm_start_from"
"""The user attribute of an enqueued trial that names its origin, `study/number`."""
AUTO_MAX_STUDIES = 20  # the newest matching studies `auto` reads
TRIALS_READ_PER_STUDY = 2000  # completed trials read from one source study, best first


@dataclass(frozen=True)
class WarmStartTrial:
    params: dict[str, Any]
    origin: str  # study/number


def resolve_sources(
    session: Session, storage: BaseStorage, *, owner: str, spec: StudySpec
) -> list[StudyRecord]:
    """The studies `spec.warm_start` names, in order; InvalidSpec (422) for a missing one."""
    warm = spec.warm_start
    if warm is None:
        return []
    if warm.studies == "auto":
        return auto_sources(session, storage, owner=owner, spec=spec)
    found: list[StudyRecord] = []
    for i, ref in enumerate(warm.studies):
        where = StudyRecord.id == ref if isinstance(ref, int) else StudyRecord.name == ref
        record = session.scalars(
            sa.select(StudyRecord).where(StudyRecord.owner == owner, where)
        ).first()
        if record is None or record.optuna_study_id is None:
            kind = "id" if isinstance(ref, int) else "name"
            raise InvalidSpec(
                f"warm_start.studies[{i}]: you have no study with {kind} {ref!r}; name one of "
                "your studies (tunefleet studies list) or use auto",
                path=["warm_start", "studies", str(i)],
            )
        found.append(record)
    return found


def dataset_fingerprint(storage: BaseStorage, *, record: StudyRecord) -> str | None:
    """The dataset fingerprint the workers reported for a study (its newest completed
    trial's), or None before one completes."""
    if record.optuna_study_id is None:
        return None
    page = optuna_store.list_trials(
        storage,
        optuna_study_id=record.optuna_study_id,
        states=[TrialState.COMPLETE],
        descending=True,
        limit=1,
    )
    if not page.trials:
        return None
    value = page.trials[0].user_attrs.get(DATASET_FINGERPRINT_ATTR)
    return value if isinstance(value, str) else None


def auto_sources(
    session: Session, storage: BaseStorage, *, owner: str, spec: StudySpec
) -> list[StudyRecord]:
    """The owner's past studies that share a backbone (model and weights) with `spec`
    and have its dataset's fingerprint, newest first; none when no study has reported
    a fingerprint for this dataset."""
    rows = session.scalars(
        sa.select(StudyRecord)
        .where(StudyRecord.owner == owner, StudyRecord.optuna_study_id.is_not(None))
        .order_by(StudyRecord.id.desc())
    ).all()
    fingerprints: dict[int, str | None] = {}

    def fingerprint(record: StudyRecord) -> str | None:
        if record.id not in fingerprints:
            fingerprints[record.id] = dataset_fingerprint(storage, record=record)
        return fingerprints[record.id]

    target = next(
        (
            fp
            for r in rows
            if r.spec.get("dataset") == spec.dataset and (fp := fingerprint(r)) is not None
        ),
        None,
    )
    if target is None:
        return []
    wanted = spec_backbones(spec.model_dump(mode="json")).items()
    sharing = [r for r in rows if wanted & spec_backbones(r.spec).items()]
    return [r for r in sharing if fingerprint(r) == target][:AUTO_MAX_STUDIES]


def enqueue_warm_start(
    storage: BaseStorage, *, sources: list[StudyRecord], spec: StudySpec, optuna_study_id: int
) -> list[WarmStartTrial]:
    """Enqueue the best `top_k` configurations of `sources`, projected onto `spec`."""
    if spec.warm_start is None or spec.warm_start.top_k == 0 or not sources:
        return []
    chosen = best_configurations(storage, sources=sources, spec=spec)
    for trial in chosen:
        optuna_store.enqueue_trial(
            storage,
            optuna_study_id=optuna_study_id,
            params=trial.params,
            user_attrs={WARM_START_ATTR: trial.origin},
        )
    return chosen


def best_configurations(
    storage: BaseStorage, *, sources: list[StudyRecord], spec: StudySpec
) -> list[WarmStartTrial]:
    """The best `top_k` distinct projected configurations, best first."""
    assert spec.warm_start is not None
    scored: list[tuple[tuple[float, ...], str, dict[str, Any]]] = []
    runs_on = spec_backbones(spec.model_dump(mode="json"))
    for record in sources:
        for trial in _completed(storage, record=record):
            scores = _scores(trial, record=record, spec=spec)
            if scores is None:
                continue
            projected = project_trial(
                trial.params, ran_on=spec_backbones(record.spec), spec=spec, runs_on=runs_on
            )
            if projected is not None:
                scored.append((scores, f"{record.name}/{trial.number}", projected))
    ranked = _rank(scored, several=len(spec.objectives) > 1)
    out: list[WarmStartTrial] = []
    seen: set[tuple] = set()
    for _, origin, projected in ranked:
        key = tuple(sorted(projected.items()))
        if not projected or key in seen:
            continue
        seen.add(key)
        out.append(WarmStartTrial(params=projected, origin=origin))
        if len(out) == spec.warm_start.top_k:
            break
    return out


def completed_trials(
    storage: BaseStorage,
    *,
    optuna_study_id: int,
    objectives: list[dict[str, Any]],
    below_number: int | None = None,
) -> list[FrozenTrial]:
    """Up to TRIALS_READ_PER_STUDY completed trials of a past study whose spec has
    `objectives`, best first when it optimised one objective (so that a long study's
    best are read); only those numbered below `below_number` when given."""
    order_by = 0 if len(objectives) == 1 else None
    page = optuna_store.list_trials(
        storage,
        optuna_study_id=optuna_study_id,
        states=[TrialState.COMPLETE],
        order_by=order_by,
        descending=order_by is not None and objectives[0].get("direction") == "maximize",
        limit=TRIALS_READ_PER_STUDY,
        below_number=below_number,
    )
    return page.trials


def _completed(storage: BaseStorage, *, record: StudyRecord) -> list[FrozenTrial]:
    assert record.optuna_study_id is not None
    return completed_trials(
        storage,
        optuna_study_id=record.optuna_study_id,
        objectives=record.spec.get("objectives", []),
    )


def objective_values(
    trial: FrozenTrial, *, metrics: list[str], spec: StudySpec
) -> tuple[float, ...] | None:
    """The trial's values of `spec`'s objectives, from a study whose objectives were
    `metrics`; None when it lacks one (a metric its study neither optimised nor recorded)."""
    values = []
    for objective in spec.objectives:
        if objective.metric in metrics and trial.values is not None:
            value = trial.values[metrics.index(objective.metric)]
        else:
            value = trial.user_attrs.get(objective.metric)  # measured, not optimised
        if not isinstance(value, int | float) or not math.isfinite(value):
            return None
        values.append(float(value))
    return tuple(values)


def _scores(
    trial: FrozenTrial, *, record: StudyRecord, spec: StudySpec
) -> tuple[float, ...] | None:
    """The trial's values of the new study's objectives, each as `higher is better`."""
    metrics = [o["metric"] for o in record.spec.get("objectives", [])]
    values = objective_values(trial, metrics=metrics, spec=spec)
    if values is None:
        return None
    return tuple(
        v if o.direction == "maximize" else -v for v, o in zip(values, spec.objectives, strict=True)
    )


def _rank(scored: list, *, several: bool) -> list:
    """By the first objective; with several objectives, the Pareto front first."""
    by_first = sorted(scored, key=lambda s: s[0][0], reverse=True)
    if not several:
        return by_first

    def dominated(a: tuple[float, ...]) -> bool:
        return any(all(x >= y for x, y in zip(b, a, strict=True)) and b != a for b, _, _ in scored)

    front = [s for s in by_first if not dominated(s[0])]
    return front


def project_trial(
    params: dict[str, Any],
    *,
    ran_on: dict[str, Any],
    spec: StudySpec,
    runs_on: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """A past trial's parameters onto `spec` (project_params), given the backbones its
    study ran on and those of `spec` (`spec_backbones`, computed when not given); None
    when it ran on a backbone `spec` does not use (same model and weights), whose
    result says nothing of this study's."""
    backbone = params.get(SOURCE_PARAM)
    if backbone is None and len(ran_on) == 1:
        (backbone,) = ran_on
    if backbone is not None:
        if runs_on is None:
            runs_on = spec_backbones(spec.model_dump(mode="json"))
        if backbone not in runs_on or ran_on.get(backbone) != runs_on[backbone]:
            return None
        if SOURCE_PARAM in spec.search_space:
            params = {**params, SOURCE_PARAM: backbone}
    return project_params(params, spec=spec)


def project_params(params: dict[str, Any], *, spec: StudySpec) -> dict[str, Any]:
    """Parameters onto `spec`'s search space: unknown names and categorical values it
    lacks dropped, numbers clipped into range and onto the step."""
    out: dict[str, Any] = {}
    for name, value in params.items():
        dist = spec.search_space.get(name)
        if dist is None:
            continue
        if isinstance(dist, CategoricalParam):
            matches = [
                c
                for c in dist.choices
                if c == value and isinstance(c, bool) == isinstance(value, bool)
            ]
            if matches:
                out[name] = matches[0]
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        out[name] = _clip(dist, value)
    try:
        return validate_params(spec, out)
    except SpecError:  # a value the rounding could not place: leave it to the sampler
        return {}


def _clip(dist: FloatParam | IntParam, value: float) -> float | int:
    value = min(max(value, dist.low), dist.high)
    if dist.step is not None:
        steps = math.floor((dist.high - dist.low) / dist.step + 1e-9)
        value = dist.low + min(steps, max(0, round((value - dist.low) / dist.step))) * dist.step
    if isinstance(dist, IntParam):
        return round(value)
    return float(value)
