"""The API in this process on a real PostgreSQL database, shared by the tests of a module,
with tokens for two users, an admin and a worker.

The app is the one `tunefleet serve` runs (service.main.create_app), lifespan and
reaper included, called through Starlette's TestClient instead of a socket: the
tests here check what the API answers, not how a process starts. A real uvicorn
process serves the fleet, outage and end-to-end tests.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import optuna
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service import auth
from service.config import load_settings
from service.db import session_scope
from service.main import create_app
from service.search import distributions
from tunefleet.spec import StudySpec

USERS = {"alice": "user", "bob": "user", "root": "admin", "gpu-node-1": "worker"}
_names = itertools.count()


@dataclass
class LiveApi:
    """The app, its database and a token per user of USERS."""

    app: FastAPI
    database_url: str
    tokens: dict[str, str]
    _clients: dict[str, httpx.Client] = field(default_factory=dict)

    def client(self, headers: dict[str, str] | None = None) -> TestClient:
        """A new HTTP client of the app, usable from its own thread.

        Not as a context manager: entering one runs the app's lifespan a second time.
        """
        return TestClient(self.app, headers=headers)

    def as_(self, who: str) -> httpx.Client:
        """An HTTP client that sends `who`'s token."""
        if who not in self._clients:
            self._clients[who] = self.client({"Authorization": f"Bearer {self.tokens[who]}"})
        return self._clients[who]

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


def make_tokens(app: FastAPI) -> dict[str, str]:
    """A token for each of USERS, made the way `tunefleet token create` makes it."""
    secret = app.state.settings.token_secret
    with session_scope(app.state.engine) as session:
        return {
            owner: auth.create_token(session, scope=scope, owner=owner, secret=secret)
            for owner, scope in USERS.items()
        }


def in_process_app(database_url: str, data_dir: Path) -> FastAPI:
    """The API's app on a migrated database, with the settings `tunefleet serve` would read."""
    settings = load_settings(database_url=database_url, data_dir=data_dir)
    settings.ensure_dirs()
    return create_app(settings)


@pytest.fixture(scope="module")
def live_api(module_pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    app = in_process_app(module_pg_url, tmp_path_factory.mktemp("api"))
    with TestClient(app):  # runs the lifespan (the reaper) until the module's tests are done
        api = LiveApi(app=app, database_url=module_pg_url, tokens=make_tokens(app))
        yield api
        api.close()


def unique_name(prefix: str = "study") -> str:
    return f"{prefix}-{next(_names)}"


def study_spec(**overrides: Any) -> dict[str, Any]:
    """A valid spec with a fresh name; keyword arguments replace its fields."""
    spec: dict[str, Any] = {
        "name": unique_name(),
        "source_model": "builtin:digits-cnn",
        "dataset": "builtin:digits-5to9",
        "objectives": [{"metric": "accuracy", "direction": "maximize"}],
        "search_space": {
            "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            "activation": {"type": "categorical", "choices": ["relu", "gelu", "silu"]},
            "head_depth": {"type": "int", "low": 1, "high": 3},
        },
        "budget": {"max_trials": 20, "epochs": 3},
    }
    spec.update(overrides)
    return spec


def create_study(client: httpx.Client, **overrides: Any) -> dict[str, Any]:
    answer = client.post("/api/v1/studies", json=study_spec(**overrides))
    assert answer.status_code == 201, answer.text
    return answer.json()


def error_of(answer: httpx.Response) -> dict[str, Any]:
    """The `detail` of an error answer (our shape for every error)."""
    body = answer.json()
    assert isinstance(body.get("detail"), dict), body
    return body["detail"]


def optuna_storage(api: LiveApi) -> optuna.storages.RDBStorage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optuna.storages.RDBStorage(api.database_url, skip_compatibility_check=True)


def run_trials(api: LiveApi, study: dict[str, Any], values: list[list[float]]) -> None:
    """Complete one trial per entry of `values`, the way the service's workers would."""
    spec = StudySpec.model_validate(study["spec"])
    optuna_study = optuna.load_study(
        study_name=study["optuna_study_name"], storage=optuna_storage(api)
    )
    for trial_values in values:
        trial = optuna_study.ask(distributions(spec))
        optuna_study.tell(trial, trial_values)
