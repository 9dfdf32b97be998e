"""bench.search_quality --combine: results of other seeds measured as one run of them all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.search_quality import ARMS, combine


def entry(accuracy: float | None, train_seconds: float) -> dict:
    state = "PRUNED" if accuracy is None else "COMPLETE"
    return {
        "state": state,
        "accuracy": accuracy,
        "train_seconds": train_seconds,
        "seconds": train_seconds + 1,
        "epochs": 8,
        "params": {"lr": train_seconds},
        "warm_start_from": None,
    }


def results_file(path: Path, first_seed: int, logs: dict[str, list[list[dict]]]) -> Path:
    seeds = len(logs["random_nopruning"])
    spread = {"params": {}, "accuracies": [0.9, 0.92], "mean": 0.91, "stdev": 0.01}
    spread.update(min=0.9, max=0.92)
    body = {
        "config": {
            "dataset": "builtin:glyphs",
            "warm_from": "builtin:glyphs-s1",
            "source_model": "builtin:glyphs-cnn",
            "trials_per_run": 2,
            "epochs": 8,
            "search_space": {"lr": {}},
            "train_clock": "process CPU time of fine_tune",
            "first_seed": first_seed,
            "seeds": seeds,
        },
        "wall_seconds": 10.0,
        "best_configuration_seed_spread": spread,
        "observations_per_run": [1] * seeds,
        "priors": [[entry(0.5, 1.0)]] * seeds,
        "trials": logs,
    }
    path.write_text(json.dumps(body))
    return path


def test_combined_runs_are_measured_against_the_best_of_all(tmp_path: Path) -> None:
    # Seeds 0: every arm finds 0.90 at once. Seed 1: random finds 0.99 on its second trial,
    # TPE never does; so 99% of the best is 0.9801, which only seed 1's random reaches.
    first = {arm: [[entry(0.90, 2.0), entry(0.80, 2.0)]] for arm in ARMS}
    second = {arm: [[entry(None, 1.0), entry(0.85, 3.0)]] for arm in ARMS}
    second["random_nopruning"] = [[entry(0.50, 2.0), entry(0.99, 4.0)]]
    a = results_file(tmp_path / "a.json", 0, first)
    b = results_file(tmp_path / "b.json", 1, second)

    results = combine([a, b])
    assert results["config"]["seeds"] == 2 and results["config"]["seed_list"] == [0, 1]
    assert results["best_accuracy_any_run"] == 0.99
    at99 = results["thresholds"]["0.99"]
    assert at99["target_accuracy"] == pytest.approx(0.9801)
    random = at99["arms"]["random_nopruning"]
    assert random["reached"] == 1 and [c["seconds"] for c in random["per_run"]] == [4.0, 6.0]
    cold = at99["arms"]["tpe_hyperband"]
    assert cold["reached"] == 0 and cold["median_seconds"] == 4.0  # whole runs: 4 s each
    assert at99["ratio_seconds_tpe_over_random"] == pytest.approx(4.0 / 5.0)
    # Epochs trained to the target, 8 a trial here: random 16 and 16, cold 16 and 16 (whole).
    assert [c["epochs"] for c in random["per_run"]] == [16, 16]
    assert at99["ratio_epochs_tpe_over_random"] == pytest.approx(1.0)
    warm = at99["arms"]["tpe_hyperband_warm"]
    assert warm["median_epochs"] == 16 and at99["ratio_epochs_warm_over_cold"] == 1.0
    # The random arm's completed trials: 0.9, 0.8, 0.5, 0.99; median 0.85 over the best.
    assert results["discrimination"]["ratio"] == pytest.approx(0.85 / 0.99)
    assert len(results["best_configuration_seed_spread"]) == 2
    assert results["observations_per_run"] == [1, 1]


def test_results_of_the_same_seeds_or_another_task_are_refused(tmp_path: Path) -> None:
    logs = {arm: [[entry(0.9, 1.0)]] for arm in ARMS}
    a = results_file(tmp_path / "a.json", 0, logs)
    again = results_file(tmp_path / "again.json", 0, logs)
    with pytest.raises(SystemExit, match="share seeds"):
        combine([a, again])
    # Another task, or another sampler or pruner setting, or another clock: another search.
    for key, value in (
        ("dataset", "builtin:digits-shifted"),
        ("tpe", "TPESampler(seed, multivariate=True, n_startup_trials=5)"),
        ("hyperband", "HyperbandPruner(min_resource=2, max_resource=8, reduction_factor=3)"),
        ("train_clock", None),  # a file of before the clock was CPU time
    ):
        other = results_file(tmp_path / f"other-{key}.json", 5, logs)
        body = json.loads(other.read_text())
        body["config"][key] = value
        other.write_text(json.dumps(body))
        with pytest.raises(SystemExit, match=key):
            combine([a, other])
