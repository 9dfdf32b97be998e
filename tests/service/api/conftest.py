"""A live API on a real PostgreSQL database, shared by the tests of a module,
with tokens for two users, an admin and a worker."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import optuna
import pytest

from service.search import distributions
from tests.conftest import ApiServer, create_token, start_api_server
from tunefleet.spec import StudySpec

USERS = {"alice": "user", "bob": "user", "root": "admin", "gpu-node-1": "worker"}
_names = itertools.count()


@dataclass
class LiveApi:
    server: ApiServer
    tokens: dict[str, str]
    _clients: dict[str, httpx.Client] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def database_url(self) -> str:
        return self.server.database_url

    def as_(self, who: str) -> httpx.Client:
        """An HTTP client that sends `who`'s token."""
        if who not in self._clients:
            self._clients[who] = httpx.Client(
                base_url=self.url,
                headers={"Authorization": f"Bearer {self.tokens[who]}"},
                timeout=30.0,
            )
        return self._clients[who]

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


@pytest.fixture(scope="module")
def live_api(module_pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    server = start_api_server(module_pg_url, tmp_path_factory.mktemp("api"))
    try:
        tokens = {
            owner: create_token(module_pg_url, scope=scope, owner=owner)
            for owner, scope in USERS.items()
        }
        api = LiveApi(server=server, tokens=tokens)
        yield api
        api.close()
    finally:
        server.stop()


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
