"""`tunefleet worker --pack K` against a real API process: batched leases, per-trial ends."""
# ruff: noqa: F811 - the fixtures come from tests.test_fleet_support

from __future__ import annotations

from collections import Counter

import pytest

from tests.conftest import copy_source_models
from tests.test_fleet_support import (  # noqa: F401 - fixtures
    FleetEnv,
    fleet_env,
    fleet_env_module,
)


def test_a_packed_worker_leases_in_batches_and_ends_each_trial_on_its_own(fleet_env: FleetEnv):
    study_id = fleet_env.create_study("packed", budget={"max_trials": 10, "epochs": 2})
    worker = fleet_env.start_worker("--pack", "4", "--idle-exit", "2", epoch_s=0.01)
    assert fleet_env.wait_workers([worker], timeout_s=90) == [0], fleet_env.worker_log(worker)
    trials = fleet_env.trials(study_id)
    assert Counter(t.state.name for t in trials) == {"COMPLETE": 10}
    assert all(sorted(t.intermediate_values) == [1, 2] for t in trials)
    leases = fleet_env.leases(study_id)
    # Leased in batches of 4, 4 and 2: three lease times, each trial its own lease.
    assert len({row.leased_at for row in leases}) == 3
    assert {row.state for row in leases} == {"completed"}


def test_a_packed_worker_fails_only_the_trial_that_raised(fleet_env: FleetEnv):
    study_id = fleet_env.create_study("packed-fail", budget={"max_trials": 3, "epochs": 1})
    worker = fleet_env.start_worker(
        "--pack", "3", "--max-trials", "3", objective="failing", epoch_s=0.01
    )
    assert fleet_env.wait_workers([worker], timeout_s=60) == [0], fleet_env.worker_log(worker)
    states = Counter(t.state.name for t in fleet_env.trials(study_id))
    assert states == {"FAIL": 3}
    assert {row.state for row in fleet_env.leases(study_id)} == {"failed"}


HEAD_ONLY = {
    "search_space": {
        "lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
        "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    },
    "budget": {"max_trials": 4, "epochs": 2},
    "robustness": {"gaussian_sigma": [], "fgsm_eps": []},
}
PARAMS = [
    {"lr": 0.01, "dropout": 0.0},
    {"lr": 0.003, "dropout": 0.3},
    {"lr": 0.05, "dropout": 0.1},
    {"lr": 0.002, "dropout": 0.45},
]


def test_a_packed_worker_trains_head_only_trials_fused_as_they_would_alone(
    fleet_env: FleetEnv, tmp_path
):
    accuracy: dict[int, dict[tuple, float]] = {}
    cache_states: dict[int, list[str]] = {}
    for pack in (4, 1):
        study_id = fleet_env.create_study(f"engine-pack-{pack}", **HEAD_ONLY)
        for params in PARAMS:
            fleet_env.enqueue(study_id, params)
        worker = fleet_env.start_worker(
            "--pack",
            str(pack),
            "--max-trials",
            "4",
            objective=None,  # the trial engine, fused where trials can be
            settings={"cache_dir": copy_source_models(tmp_path / f"cache-{pack}")},
        )
        assert fleet_env.wait_workers([worker], timeout_s=240) == [0], fleet_env.worker_log(worker)
        trials = sorted(fleet_env.trials(study_id), key=lambda t: t.number)
        assert [t.state.name for t in trials] == ["COMPLETE"] * 4, fleet_env.worker_log(worker)
        assert all(sorted(t.intermediate_values) == [1, 2] for t in trials)
        accuracy[pack] = {tuple(sorted(t.params.items())): t.values[0] for t in trials}
        cache_states[pack] = [t.user_attrs["feature_cache"] for t in trials]
    # One stack computed the features once for all four; alone, the first trial did.
    assert cache_states == {4: ["miss"] * 4, 1: ["miss", "hit", "hit", "hit"]}
    assert accuracy[4].keys() == accuracy[1].keys()
    for params, value in accuracy[4].items():
        assert value == pytest.approx(accuracy[1][params], abs=1e-4), params
