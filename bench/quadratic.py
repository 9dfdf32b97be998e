"""The trivial study of the service benchmarks: four known hyperparameters and
a quadratic objective, so that every second measured is the search's own cost.

The service gets `spec(...)`; the Optuna baseline builds its sampler and
distributions from the same spec through the service's own service/search.py, so both
sides run the same sampler with the same options over the same space.
"""

from __future__ import annotations

import math
from typing import Any

SEARCH_SPACE = {
    "lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "head_depth": {"type": "int", "low": 1, "high": 4},
    "activation": {"type": "categorical", "choices": ["relu", "gelu", "silu", "tanh"]},
}
METRIC = "accuracy"
_ACTIVATION_COST = {"relu": 0.0, "gelu": 0.1, "silu": 0.2, "tanh": 0.4}


def spec(name: str, *, max_trials: int, seed: int | None) -> dict[str, Any]:
    """A study spec (JSON) on the trivial space: TPE, no pruning, one objective."""
    return {
        "name": name,
        "source_model": "builtin:digits-cnn",
        "dataset": "builtin:digits-5to9",
        "objectives": [{"metric": METRIC, "direction": "maximize"}],
        "search_space": SEARCH_SPACE,
        "sampler": {"type": "tpe", "seed": seed},
        "pruner": {"type": "none"},
        "budget": {"max_trials": max_trials, "epochs": 1, "max_retries": 0},
    }


def objective(params: dict[str, Any]) -> float:
    """In (0, 1], an accuracy's range: highest (1) at lr=1e-3, dropout=0.1, head_depth=2, relu."""
    return math.exp(
        -(
            (math.log10(params["lr"]) + 3) ** 2
            + 10 * (params["dropout"] - 0.1) ** 2
            + (params["head_depth"] - 2) ** 2
            + _ACTIVATION_COST[params["activation"]]
        )
    )


def optuna_parts(study_spec: dict[str, Any]):
    """The sampler and distributions the service builds for this spec."""
    from service.search import build_sampler, distributions
    from tunefleet.spec import StudySpec

    parsed = StudySpec.model_validate(study_spec)
    return build_sampler(parsed), distributions(parsed)


def random_completed_trials(study_spec: dict[str, Any], count: int, seed: int) -> list:
    """`count` COMPLETE FrozenTrials with random params, for `study.add_trials`."""
    import random

    from optuna.trial import TrialState, create_trial

    _, dists = optuna_parts(study_spec)
    rng = random.Random(seed)
    trials = []
    for _ in range(count):
        params: dict[str, Any] = {}
        for name, p in SEARCH_SPACE.items():
            if p["type"] == "float" and p.get("log"):
                params[name] = math.exp(rng.uniform(math.log(p["low"]), math.log(p["high"])))
            elif p["type"] == "float":
                params[name] = rng.uniform(p["low"], p["high"])
            elif p["type"] == "int":
                params[name] = rng.randint(p["low"], p["high"])
            else:
                params[name] = rng.choice(p["choices"])
        trials.append(
            create_trial(
                params=params,
                distributions=dists,
                value=objective(params),
                state=TrialState.COMPLETE,
            )
        )
    return trials
