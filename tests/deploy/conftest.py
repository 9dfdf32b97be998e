"""What the deployment tests read: the repository's compose files, manifests and schema."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
GPU_OVERRIDE_FILE = DEPLOY / "docker-compose.gpus.yml"
# In CI the repository is a fresh clone with shared/ beside it.
COMPOSE_SCHEMA = REPO_ROOT.parent / "shared" / "schemas" / "compose-spec.json"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)


@pytest.fixture(scope="session")
def gpu_override() -> dict[str, Any]:
    return load_yaml(GPU_OVERRIDE_FILE)


@pytest.fixture(scope="session")
def compose_schema() -> dict[str, Any]:
    if not COMPOSE_SCHEMA.is_file():
        pytest.fail(
            f"the Compose JSON schema is missing: expected {COMPOSE_SCHEMA} "
            "(shared/ must sit beside the repository, as in CI)",
            pytrace=False,
        )
    return json.loads(COMPOSE_SCHEMA.read_text())


@pytest.fixture(scope="session")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
