"""Small deterministic objectives with run_trial's signature, for the fleet tests.

A worker runs one with the hidden option ``--objective tests.workers.objectives:NAME``.
``TF_TEST_EPOCH_S`` (environment) is how long each epoch takes.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from tunefleet.protocol import Assignment


class TrialPruned(Exception):
    """Same name as the engine's: the worker recognises it by name."""


def _epoch_s() -> float:
    return float(os.environ.get("TF_TEST_EPOCH_S", "0.02"))


def score(params: dict) -> float:
    """Best at dropout 0.3 and lr 1e-2: in (0, 1]."""
    dropout = float(params.get("dropout", 0.3))
    lr = float(params.get("lr", 1e-2))
    return math.exp(-((dropout - 0.3) ** 2) * 4 - (math.log10(lr) + 2) ** 2 / 4)


def quadratic(assignment: Assignment, report, *, device: str, cache_dir: Path, artifact_dir: Path):
    """Reports score * epoch / epochs after each epoch; returns the score for every metric."""
    epochs = assignment.spec.budget.epochs
    value = score(assignment.params)
    for epoch in range(1, epochs + 1):
        time.sleep(_epoch_s())
        if report(epoch, value * epoch / epochs):
            raise TrialPruned(f"pruned at epoch {epoch}")
    metrics = assignment.spec.metric_names
    return {
        "values": {m: value if i == 0 else 1 - value for i, m in enumerate(metrics)},
        "attrs": {"device": device, "objective": "quadratic"},
    }


def failing(assignment: Assignment, report, *, device: str, cache_dir: Path, artifact_dir: Path):
    report(1, 0.5)
    raise ValueError(f"no such layer for trial {assignment.number}")


def not_a_number(
    assignment: Assignment, report, *, device: str, cache_dir: Path, artifact_dir: Path
):
    return {"values": {metric: math.nan for metric in assignment.spec.metric_names}}


def engine(assignment: Assignment, report, *, device: str, cache_dir: Path, artifact_dir: Path):
    """The real trial engine (torch), for specs that must fail the way a user's would."""
    from workers.transfer import run_trial

    return run_trial(
        assignment, report, device=device, cache_dir=cache_dir, artifact_dir=artifact_dir
    )


def elsewhere(assignment: Assignment, report, *, device: str, cache_dir: Path, artifact_dir: Path):
    """Like quadratic, with a checkpoint written where the service cannot reach it."""
    result = quadratic(
        assignment, report, device=device, cache_dir=cache_dir, artifact_dir=artifact_dir
    )
    return {**result, "artifact": f"/tmp/not-the-artifact-root/{assignment.trial_id}.pt"}
