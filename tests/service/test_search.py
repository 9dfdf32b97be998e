"""Spec -> Optuna (service/search.py): every sampler and pruner the spec allows really runs."""

from __future__ import annotations

import warnings
from typing import Any

import optuna
import pytest

from service import search
from service.optuna_store import create_optuna_study, load_optuna_study
from tunefleet.spec import StudySpec


def make_spec(**overrides: Any) -> StudySpec:
    data: dict[str, Any] = {
        "name": "bridge",
        "source_model": "builtin:digits-cnn",
        "dataset": "builtin:digits-5to9",
        "objectives": [{"metric": "accuracy"}],
        "search_space": {
            "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            "dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1},
            "head_depth": {"type": "int", "low": 1, "high": 4},
            "activation": {"type": "categorical", "choices": ["relu", "gelu"]},
        },
    }
    data.update(overrides)
    return StudySpec.model_validate(data)


def run(spec: StudySpec, n_trials: int = 12) -> optuna.Study:
    """Ask and tell like the service does, with a toy objective per metric."""
    storage = optuna.storages.InMemoryStorage()
    create_optuna_study(storage, name="s", spec=spec, study_key=1)
    study = load_optuna_study(storage, name="s", spec=spec, study_key=1)
    space = search.distributions(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(n_trials):
            trial = study.ask(space)
            score = -abs(trial.params.get("lr", 0.0) - 0.01) + trial.params.get("head_depth", 0)
            study.tell(trial, [score + i for i in range(len(spec.objectives))])
    return study


SINGLE = ["tpe", "nsga2", "random", "gp", "qmc"]
MULTI = ["tpe", "nsga2", "random", "gp", "qmc"]


@pytest.mark.parametrize("sampler", SINGLE)
def test_sampler_runs_single_objective(sampler: str) -> None:
    study = run(make_spec(sampler={"type": sampler, "seed": 1}))
    assert len(study.trials) == 12
    for trial in study.trials:
        assert set(trial.params) == {"lr", "dropout", "head_depth", "activation"}
        assert 1e-4 <= trial.params["lr"] <= 1e-1


@pytest.mark.parametrize("sampler", MULTI)
def test_sampler_runs_multi_objective(sampler: str) -> None:
    spec = make_spec(
        sampler={"type": sampler, "seed": 1},
        objectives=[{"metric": "accuracy"}, {"metric": "size_mb"}],
    )
    study = run(spec)
    assert study.metric_names == ["accuracy", "size_mb"]
    assert study.best_trials


def test_grid_sampler_visits_the_grid() -> None:
    spec = make_spec(
        sampler={"type": "grid"},
        search_space={
            "dropout": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.1},
            "activation": {"type": "categorical", "choices": ["relu", "gelu"]},
        },
    )
    study = run(spec, n_trials=6)
    # The grid sampler also ran through a search space given up front by ask().
    seen = {(t.params["dropout"], t.params["activation"]) for t in study.trials}
    assert seen == {(d, a) for d in (0.0, 0.1, 0.2) for a in ("relu", "gelu")}


def test_cmaes_sampler_runs() -> None:
    study = run(make_spec(sampler={"type": "cmaes", "seed": 1}))
    assert len(study.trials) == 12


def test_scrambled_qmc_without_seed_draws_the_same_sequence_in_every_process() -> None:
    spec = make_spec(sampler={"type": "qmc", "scramble": True})
    a = search.build_sampler(spec, study_key=7)
    b = search.build_sampler(spec, study_key=7)
    assert a._seed == b._seed
    assert search.build_sampler(spec, study_key=8)._seed != a._seed


@pytest.mark.parametrize(
    ("pruner", "cls"),
    [
        ({"type": "median", "n_startup_trials": 2}, optuna.pruners.MedianPruner),
        ({"type": "hyperband"}, optuna.pruners.HyperbandPruner),
        ({"type": "successive_halving"}, optuna.pruners.SuccessiveHalvingPruner),
        ({"type": "none"}, optuna.pruners.NopPruner),
    ],
)
def test_pruners_prune_on_reported_epochs(pruner: dict, cls: type) -> None:
    spec = make_spec(pruner=pruner, budget={"epochs": 9})
    built = search.build_pruner(spec)
    assert isinstance(built, cls)
    storage = optuna.storages.InMemoryStorage()
    create_optuna_study(storage, name="p", spec=spec, study_key=1)
    study = load_optuna_study(storage, name="p", spec=spec)
    pruned = 0
    for i in range(12):
        trial = study.ask(search.distributions(spec))
        for epoch in range(9):
            trial.report(i / 12 if i % 2 else 0.01 * epoch, epoch)
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                pruned += 1
                break
        else:
            study.tell(trial, i / 12)
    assert pruned == 0 if cls is optuna.pruners.NopPruner else pruned > 0


def test_hyperband_uses_the_epoch_budget_as_max_resource() -> None:
    pruner = search.build_pruner(make_spec(pruner={"type": "hyperband"}, budget={"epochs": 27}))
    assert pruner._max_resource == 27


def test_distributions_match_the_search_space() -> None:
    space = search.distributions(make_spec())
    assert space["lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    assert space["dropout"] == optuna.distributions.FloatDistribution(0.0, 0.5, step=0.1)
    assert space["head_depth"] == optuna.distributions.IntDistribution(1, 4)
    assert space["activation"] == optuna.distributions.CategoricalDistribution(["relu", "gelu"])


@pytest.mark.parametrize("for_leases", [False, True])
def test_tpe_under_hyperband_counts_its_startup_trials_over_every_bracket(
    for_leases: bool,
) -> None:
    """Hyperband hands the sampler a view of the asking trial's bracket, but TPE reads the
    study's trials past it: its random startup ends after n_startup_trials of the whole
    study, not of each bracket (what the README's advice on n_startup_trials rests on)."""
    spec = make_spec(
        sampler={"type": "tpe", "seed": 0, "n_startup_trials": 3},
        pruner={"type": "hyperband"},
        budget={"epochs": 8},
    )
    storage = optuna.storages.InMemoryStorage()
    create_optuna_study(storage, name="brackets", spec=spec, study_key=1)
    study = load_optuna_study(storage, name="brackets", spec=spec, for_leases=for_leases)
    random = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = search.distributions(spec)
    brackets, drawn_like_random = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(6):
            trial, twin = study.ask(space), random.ask(space)
            score = -abs(trial.params["lr"] - 0.01)
            trial.report(score, 1)
            trial.should_prune()  # as a worker's first epoch does: Hyperband sets up here
            frozen = storage.get_trial(trial._trial_id)
            brackets.append(study.pruner._get_bracket_id(study, frozen))
            drawn_like_random.append(trial.params == twin.params)
            study.tell(trial, score)
            random.tell(twin, 0.0)
    assert study.pruner._n_brackets == 2
    # The fourth trial's bracket had fewer than 3 trials before it: a per-bracket count
    # would still draw it at random.
    assert brackets[:3].count(brackets[3]) < 3, brackets
    assert drawn_like_random[:4] == [True, True, True, False]
