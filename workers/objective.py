"""What a worker runs: an objective for one trial, or a pack objective for
several leased at once, loaded by ``module:function``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from workers.outcome import TrialAbandoned

__all__ = ["PACK_OBJECTIVE", "Objective", "PackObjective", "load_objective", "one_by_one"]

# run_trial(assignment, report, *, device, cache_dir, artifact_dir) -> TrialResult, where
# assignment is the Assignment the lease returned, its spec a validated StudySpec.
Objective = Callable[..., Any]
# run_trials(assignments, reports, *, device, cache_dir, artifact_dir) -> one TrialResult
# or exception per trial, in order (workers.transfer.fused.run_trials).
PackObjective = Callable[..., list[Any]]
PACK_OBJECTIVE = "workers.transfer.fused:run_trials"


def one_by_one(objective: Objective) -> PackObjective:
    """A pack objective that runs each trial alone, in turn (objectives other than the engine)."""

    def run_all(assignments, reports, **options) -> list[Any]:
        outcomes: list[Any] = []
        for assignment, report in zip(assignments, reports, strict=True):
            try:
                outcomes.append(objective(assignment, report, **options))
            except (TrialAbandoned, Exception) as error:
                outcomes.append(error)
        return outcomes

    return run_all


def load_objective(path: str) -> Objective:
    """The function named by ``module:function``."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"objective must be module:function, got {path!r}")
    return getattr(importlib.import_module(module_name), attr)
