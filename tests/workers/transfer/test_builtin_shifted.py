"""The built-in task where the search matters: digits 5-9 turned a quarter, few labelled."""

from __future__ import annotations

from pathlib import Path

import torch

from tunefleet.protocol import DATASET_FINGERPRINT_ATTR
from workers.transfer import run_trial
from workers.transfer.builtin_tasks import SHIFTED_DATASETS, load_shifted
from workers.transfer.data import InputSpec, load_dataset

DIGITS_INPUT = InputSpec(channels=1, size=8, mean=(0.305,), std=(0.3763,))


def test_the_shifted_task_has_few_labels_and_a_large_test_split() -> None:
    data = load_dataset("builtin:digits-shifted", DIGITS_INPUT)
    assert data.classes == ("5", "6", "7", "8", "9")
    assert torch.bincount(data.train.y).tolist() == [30] * 5
    assert torch.bincount(data.val.y).tolist() == [30] * 5
    assert len(data.test) >= 500
    # The splits are disjoint: every image of digits 5-9 is in exactly one.
    assert len(data.train) + len(data.val) + len(data.test) == 896


def test_the_shifted_task_is_deterministic_and_its_variant_differs() -> None:
    uri = "builtin:digits-shifted"
    again = load_shifted(uri, SHIFTED_DATASETS[uri])  # built anew, not the process cache
    data = load_dataset(uri, DIGITS_INPUT)
    assert torch.equal(again.train.x, data.train.x) and again.content_hash == data.content_hash
    variant = load_dataset("builtin:digits-shifted-s1", DIGITS_INPUT)
    assert variant.content_hash != data.content_hash
    assert not torch.equal(variant.train.x, data.train.x)
    assert len(variant.test) >= 500


def test_a_trial_reports_the_datasets_content_hash(
    cache_dir: Path, artifact_dir: Path, make_assignment
) -> None:
    result = run_trial(
        make_assignment({"lr": 0.01}, dataset="builtin:digits-shifted", budget={"epochs": 1}),
        lambda epoch, value: False,
        cache_dir=cache_dir,
        artifact_dir=artifact_dir,
    )
    expected = load_dataset("builtin:digits-shifted", DIGITS_INPUT).content_hash
    assert result.attrs[DATASET_FINGERPRINT_ATTR] == expected
    assert len(expected) == 64
