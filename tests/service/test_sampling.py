"""The lease path samples what Optuna's own `study.ask` samples (service/sampling.py).

Two studies on one PostgreSQL database go through the same history: one with
Optuna's TPESampler and `study.ask`/`study.tell`, one through the service's
lease path (one read of the study per ask, the observation-caching TPE, the
parameters and constant liar's attributes in one transaction). Same seed,
same order of asks and tells (with trials running side by side, so constant
liar has something to lie about), so every trial's parameters must be equal.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import optuna
import pytest
from optuna.trial import FrozenTrial

from service import study_cache
from service._optuna_internals import (
    ObservationCachingTPE,
    SnapshotStorage,
    trial_id_of,
    uncached,
)
from service.models import StudyRecord
from service.optuna_store import create_optuna_study
from service.search import build_sampler, distributions
from service.study_cache import LoadedStudy, forget_loaded_study, loaded_study
from service.trial_lifecycle import ask_leased_trial, complete_leased_trial
from service.warm_observe import ObservingSampler, observations, record_sources, recorded
from tunefleet.spec import StudySpec

SPACE = {
    "lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "weight_decay": {"type": "float", "low": 0.0, "high": 0.1, "step": 0.01},
    "head_depth": {"type": "int", "low": 1, "high": 4},
    "activation": {"type": "categorical", "choices": ["relu", "gelu", "silu", "tanh"]},
}


# A finite space, for the grid sampler.
GRID_SPACE = {
    "lr": {"type": "float", "low": 1e-3, "high": 1e-2, "step": 1e-3},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1},
    "weight_decay": {"type": "float", "low": 0.0, "high": 0.1, "step": 0.01},
    "head_depth": {"type": "int", "low": 1, "high": 4},
    "activation": {"type": "categorical", "choices": ["relu", "gelu", "silu", "tanh"]},
}


def spec_of(objectives: int, space: dict | None = None, **sampler: Any) -> StudySpec:
    sampler = {"type": "tpe", "seed": 7, "n_startup_trials": 4, **sampler}
    if sampler["type"] in ("random", "qmc", "grid", "nsga2"):
        del sampler["n_startup_trials"]
    return StudySpec.model_validate(
        {
            "name": "same-draws",
            "source_model": "builtin:digits-cnn",
            "dataset": "builtin:digits-5to9",
            "objectives": [{"metric": "accuracy"}, {"metric": "robustness"}][:objectives],
            "search_space": space or SPACE,
            "sampler": sampler,
        }
    )


def score(params: dict[str, Any], objectives: int) -> list[float]:
    base = -((math.log10(params["lr"]) + 3) ** 2) - (params["head_depth"] - 2) ** 2
    base -= {"relu": 0, "gelu": 0.1, "silu": 0.2, "tanh": 0.4}[params["activation"]]
    return [base, params["dropout"] - params["weight_decay"]][:objectives]


# Asks (a) and tells (t) of the oldest running trial: up to three trials run at once.
SCHEDULE = "a" * 3 + "taat" * 4 + "ta" * 6 + "atta" * 3 + "ttt"


def with_optuna(
    storage, spec: StudySpec, observed: list[FrozenTrial] | None = None
) -> list[dict[str, Any]]:
    create_optuna_study(storage, name="optuna", spec=spec, study_key=1)
    sampler = build_sampler(spec)
    assert not isinstance(sampler, ObservationCachingTPE)  # Optuna's own
    if observed is not None:
        sampler = ObservingSampler(sampler, observed)
    study = optuna.load_study(study_name="optuna", storage=storage, sampler=sampler)
    space = distributions(spec)
    running: list[optuna.Trial] = []
    for step in SCHEDULE:
        if step == "a":
            running.append(study.ask(fixed_distributions=space))
        else:
            trial = running.pop(0)
            study.tell(trial, score(trial.params, len(spec.objectives)))
    return [t.params for t in study.get_trials(deepcopy=False)]


def with_lease_path(
    storage, spec: StudySpec, created: Callable[[int], None] | None = None
) -> tuple[list[dict[str, Any]], LoadedStudy]:
    """`created` is called with the Optuna study's id before the study is loaded."""
    optuna_id = create_optuna_study(storage, name="service", spec=spec, study_key=2)
    if created is not None:
        created(optuna_id)
    entry = loaded_study(
        storage, optuna_study_name="service", spec=spec.model_dump(mode="json"), study_key=2
    )
    assert isinstance(entry.storage, SnapshotStorage)
    sampler = entry.study.sampler
    if isinstance(sampler, ObservingSampler):
        sampler = sampler.sampler
    assert isinstance(sampler, ObservationCachingTPE) == (spec.sampler.type == "tpe")
    running = []
    for step in SCHEDULE:
        if step == "a":
            running.append(ask_leased_trial(entry, entry.trials()))
        else:
            trial = running.pop(0)
            complete_leased_trial(
                entry,
                trial_id=trial_id_of(trial),
                values=score(trial.params, len(spec.objectives)),
                attrs={},
                artifact=None,
                worker={},
            )
    return [t.params for t in entry.study.get_trials(deepcopy=False)], entry


def comparable(system_attrs: dict[str, Any]) -> dict[str, Any]:
    """System attributes, with CMA-ES's pickled optimizer reduced to its presence: it
    differs between two runs of Optuna alone (an uninitialised buffer, its RNG's state)."""
    return {
        k: ("<cma optimizer>" if k.startswith("cma:optimizer") else v)
        for k, v in system_attrs.items()
    }


@pytest.mark.parametrize(
    ("objectives", "sampler"),
    [
        (1, {}),  # multivariate TPE with constant liar, the default
        (1, {"constant_liar": False}),
        (1, {"multivariate": False}),
        (1, {"multivariate": True, "group": True}),
        (2, {}),  # several objectives: independent TPE
        (1, {"type": "random"}),
        (2, {"type": "nsga2", "population_size": 4}),
        (1, {"type": "gp", "n_startup_trials": 4}),
        (1, {"type": "cmaes", "n_startup_trials": 2, "popsize": 4}),
        (1, {"type": "qmc", "scramble": True}),
        (1, {"type": "grid"}),
    ],
    ids=[
        "tpe",
        "tpe-no-liar",
        "tpe-independent",
        "tpe-group",
        "tpe-two-objectives",
        "random",
        "nsga2",
        "gp",
        "cmaes",
        "qmc",
        "grid",
    ],
)
def test_lease_path_draws_what_study_ask_draws(
    migrated_pg_url: str, objectives: int, sampler: dict
) -> None:
    """Every sampler the spec offers, with the same reads and the system attributes
    samplers set on a new trial (constant liar's sample, NSGA-II's generation, the
    grid point) written with its parameters."""
    kind = sampler.get("type", "tpe")
    spec = spec_of(objectives, GRID_SPACE if kind == "grid" else None, **sampler)
    storage = optuna.storages.RDBStorage(migrated_pg_url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = with_optuna(storage, spec)
        got, entry = with_lease_path(storage, spec)
    assert len(expected) == SCHEDULE.count("a")
    assert got == expected
    if kind in ("tpe", "grid"):  # it did search; the grid is far from covered
        assert len({tuple(sorted(p.items())) for p in got}) == len(got)
    # Every trial finished, with its parameters and system attributes in the
    # database as the lease path wrote them.
    fresh = optuna.load_study(study_name="service", storage=migrated_pg_url)
    baseline = optuna.load_study(study_name="optuna", storage=migrated_pg_url)
    assert [t.params for t in fresh.trials] == expected
    assert all(t.state.name == "COMPLETE" for t in fresh.trials)
    assert [comparable(t.system_attrs) for t in fresh.trials] == [
        comparable(t.system_attrs) for t in baseline.trials
    ]
    storage.engine.dispose()
    uncached(entry.storage).engine.dispose()


@pytest.mark.parametrize(
    "sampler",
    [{}, {"multivariate": False}, {"type": "gp", "n_startup_trials": 4}],
    ids=["tpe", "tpe-independent", "gp"],
)
def test_with_observations_the_lease_path_draws_what_study_ask_draws(
    migrated_pg_url: str, sampler: dict
) -> None:
    """warm_start.observe: the service rebuilds the past trials from what the study kept
    at creation; Optuna's study.ask, given the same observations through the same
    wrapper, draws the same parameters."""
    past_spec = spec_of(1)
    spec = StudySpec.model_validate(
        {
            **spec_of(1, **sampler).model_dump(mode="json"),
            "warm_start": {"studies": ["past"], "top_k": 0, "observe": True},
        }
    )
    storage = optuna.storages.RDBStorage(migrated_pg_url)
    past_id = create_optuna_study(storage, name="past", spec=past_spec, study_key=3)
    past = optuna.load_study(
        study_name="past", storage=storage, sampler=optuna.samplers.RandomSampler(seed=3)
    )
    space = distributions(past_spec)
    for _ in range(12):
        trial = past.ask(space)
        past.tell(trial, score(trial.params, 1))
    record = StudyRecord(name="past", optuna_study_id=past_id, spec=past_spec.model_dump())

    def keep_sources(optuna_id: int) -> None:
        assert record_sources(storage, sources=[record], spec=spec, optuna_study_id=optuna_id)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got, entry = with_lease_path(storage, spec, created=keep_sources)
        sources, count = recorded(storage, optuna_study_id=entry.optuna_study_id)
        observed = observations(storage, sources=sources, spec=spec)
        expected = with_optuna(storage, spec, observed)
    assert count == len(observed) == 12
    assert [len(t.params) for t in observed] == [len(SPACE)] * 12
    assert got == expected
    storage.engine.dispose()
    uncached(entry.storage).engine.dispose()


def test_constant_liar_params_are_written_with_the_trial(migrated_pg_url: str) -> None:
    """Constant liar shares a running trial's relative sample through its system
    attributes; the lease path writes them in the parameters' transaction."""
    spec = spec_of(1)
    storage = optuna.storages.RDBStorage(migrated_pg_url)
    create_optuna_study(storage, name="liar", spec=spec, study_key=3)
    entry = loaded_study(
        storage, optuna_study_name="liar", spec=spec.model_dump(mode="json"), study_key=3
    )
    trials = [ask_leased_trial(entry, entry.trials()) for _ in range(6)]
    for trial in trials[:5]:
        complete_leased_trial(
            entry,
            trial_id=trial_id_of(trial),
            values=score(trial.params, 1),
            attrs={},
            artifact=None,
            worker={},
        )
    sampled = ask_leased_trial(entry, entry.trials())  # past n_startup_trials: relative
    stored = storage.get_trial(trial_id_of(sampled))
    assert stored.state.name == "RUNNING"
    assert stored.params == sampled.params
    liar = {k: v for k, v in stored.system_attrs.items() if k.startswith("tpe:relative_params")}
    assert liar and liar == {
        k: v for k, v in sampled.system_attrs.items() if k.startswith("tpe:relative_params")
    }
    storage.engine.dispose()


def test_loaded_studies_are_bounded_and_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each loaded study keeps Optuna's cache of its trials: a long-running API process
    keeps only the most recently used ones, and drops a deleted study's at once."""
    monkeypatch.setattr(study_cache, "MAX_LOADED_STUDIES", 2)
    monkeypatch.setattr(study_cache, "_loaded_studies", type(study_cache._loaded_studies)())
    storage = optuna.storages.InMemoryStorage()
    spec = spec_of(1)
    for key in (1, 2, 3):
        create_optuna_study(storage, name=f"s{key}", spec=spec, study_key=key)

    def load(key: int) -> LoadedStudy:
        return loaded_study(
            storage, optuna_study_name=f"s{key}", spec=spec.model_dump(mode="json"), study_key=key
        )

    first, second = load(1), load(2)
    assert load(1) is first  # used again: now the most recent
    third = load(3)  # one too many: study 2, the least recently used, goes
    assert load(1) is first and load(3) is third
    assert load(2) is not second  # loaded afresh (and study 1 went in turn)
    assert len(study_cache._loaded_studies) == 2
    forget_loaded_study(3)
    assert load(3) is not third
