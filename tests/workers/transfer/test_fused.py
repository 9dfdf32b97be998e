"""Head-only trials trained fused give what each gives alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.transfer import TrialPruned, run_trial
from workers.transfer.features import FeatureCache
from workers.transfer.fused import run_trials

SPACE = {
    "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "label_smoothing": {"type": "float", "low": 0.0, "high": 0.3},
    "head_depth": {"type": "int", "low": 1, "high": 3},
    "head_width": {"type": "int", "low": 8, "high": 64},
    "batch_size": {"type": "int", "low": 16, "high": 128},
    "unfreeze_blocks": {"type": "int", "low": 0, "high": 2},
}
# Each its own lr, weight decay, dropout, label smoothing and seed (trial number).
PARAMS = [
    {"lr": 0.01, "weight_decay": 0.0, "dropout": 0.0, "label_smoothing": 0.0},
    {"lr": 0.003, "weight_decay": 0.01, "dropout": 0.3, "label_smoothing": 0.1},
    {"lr": 0.03, "weight_decay": 0.05, "dropout": 0.1, "label_smoothing": 0.2},
    {"lr": 0.0005, "weight_decay": 0.001, "dropout": 0.45, "label_smoothing": 0.0},
]
HEAD = {"head_depth": 2, "head_width": 32, "batch_size": 64, "unfreeze_blocks": 0}


def assignments(make_assignment, params_list: list[dict]) -> list[dict]:
    return [
        make_assignment({**HEAD, **params}, search_space=SPACE, budget={"epochs": 3})
        for params in params_list
    ]


def alone(batch: list[dict], cache_dir: Path, artifact_dir: Path, cache: FeatureCache):
    results = []
    for assignment in batch:
        seen: list[float] = []
        result = run_trial(
            assignment,
            lambda _epoch, value, seen=seen: seen.append(value) or False,
            cache_dir=cache_dir,
            artifact_dir=artifact_dir / "alone",
            feature_cache=cache,
        )
        results.append((result, seen))
    return results


def test_fused_trials_match_the_same_trials_alone(make_assignment, cache_dir, artifact_dir):
    cache = FeatureCache()
    batch = assignments(make_assignment, PARAMS)
    expected = alone(batch, cache_dir, artifact_dir, cache)
    seen: list[list[float]] = [[] for _ in batch]
    outcomes = run_trials(
        batch,
        [lambda _epoch, value, k=k: seen[k].append(value) or False for k in range(len(batch))],
        cache_dir=cache_dir,
        artifact_dir=artifact_dir / "fused",
        feature_cache=cache,
    )
    for (result, history), outcome, fused_history in zip(expected, outcomes, seen, strict=True):
        assert not isinstance(outcome, BaseException), outcome
        assert outcome.values["accuracy"] == pytest.approx(result.values["accuracy"], abs=1e-4)
        assert fused_history == pytest.approx(history, abs=1e-4)
        assert outcome.attrs["best_epoch"] == result.attrs["best_epoch"]
        assert outcome.attrs["feature_cache"] == "hit"
    # Different parameters, different trials: the stack did not train one head four times.
    assert len({tuple(history) for history in seen}) == len(batch)


def test_a_pruned_trial_leaves_the_stack_and_the_others_go_on(
    make_assignment, cache_dir, artifact_dir
):
    cache = FeatureCache()
    batch = assignments(make_assignment, PARAMS[:3])
    expected = alone([batch[0], batch[2]], cache_dir, artifact_dir, cache)
    epochs_of_pruned: list[int] = []

    def prune_at_once(epoch: int, _value: float) -> bool:
        epochs_of_pruned.append(epoch)
        return True

    outcomes = run_trials(
        batch,
        [lambda *_: False, prune_at_once, lambda *_: False],
        cache_dir=cache_dir,
        artifact_dir=artifact_dir / "fused",
        feature_cache=cache,
    )
    assert isinstance(outcomes[1], TrialPruned)
    assert epochs_of_pruned == [1]
    for (result, _), outcome in zip(expected, [outcomes[0], outcomes[2]], strict=True):
        assert outcome.values["accuracy"] == pytest.approx(result.values["accuracy"], abs=1e-4)


def test_trials_that_cannot_fuse_train_alone_beside_a_stack(
    make_assignment, cache_dir, artifact_dir
):
    cache = FeatureCache()
    unfrozen = make_assignment(
        {**HEAD, **PARAMS[2], "unfreeze_blocks": 1}, search_space=SPACE, budget={"epochs": 2}
    )
    batch = [*assignments(make_assignment, PARAMS[:2]), unfrozen]
    expected = alone(batch, cache_dir, artifact_dir, cache)
    outcomes = run_trials(
        batch,
        [lambda *_: False] * 3,
        cache_dir=cache_dir,
        artifact_dir=artifact_dir / "fused",
        feature_cache=cache,
    )
    for (result, _), outcome in zip(expected, outcomes, strict=True):
        assert outcome.values["accuracy"] == pytest.approx(result.values["accuracy"], abs=1e-4)
    assert outcomes[2].attrs["unfrozen_stages"] == 1
