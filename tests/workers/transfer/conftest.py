"""Fixtures of the trial engine's tests: one model cache per session, small specs."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch

from tests.conftest import pretrained_source_models

_numbers = itertools.count()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models run faster on one thread, and far faster on a shared, busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """Where the built-in source model is pretrained once for the whole test run."""
    return pretrained_source_models()


@pytest.fixture
def artifact_dir(tmp_path: Path) -> Path:
    return tmp_path / "artifacts"


def _assignment(params: dict | None = None, **spec: object) -> dict:
    base = {
        "name": "digits-transfer",
        "source_model": "builtin:digits-cnn",
        "dataset": "builtin:digits-5to9",
        "objectives": [{"metric": "accuracy", "direction": "maximize"}],
        "search_space": {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}},
        "budget": {"epochs": 3},
        "seed": 0,
    }
    base.update(spec)
    number = next(_numbers)
    return {
        "trial_id": 1000 + number,
        "study_id": 7,
        "number": number,
        "params": params or {},
        "spec": base,
        "lease_expires_at": datetime.now(UTC).isoformat(),
    }


@pytest.fixture(scope="session")
def make_assignment() -> Callable[..., dict]:
    """assignment(params, **spec): the JSON of a lease on the digits study (spec fields over
    the defaults here); run_trial validates it as the worker does."""
    return _assignment


@pytest.fixture
def reports() -> tuple[list[tuple[int, float]], Callable[[int, float], bool]]:
    """A report callback that records (epoch, val_accuracy) and never prunes."""
    seen: list[tuple[int, float]] = []

    def report(epoch: int, value: float) -> bool:
        seen.append((epoch, value))
        return False

    return seen, report


@pytest.fixture(autouse=True)
def file_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The engine reads files only under its roots: the test's own folder is both."""
    monkeypatch.setenv("TUNEFLEET_DATA_ROOTS", str(tmp_path))
    monkeypatch.setenv("TUNEFLEET_MODEL_ROOTS", str(tmp_path))
    return tmp_path
