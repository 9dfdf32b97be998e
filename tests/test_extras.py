"""The install per role: each extra of pyproject.toml brings what its role runs and
nothing of the others, and each image installs its role's extra."""

from __future__ import annotations

import tomllib

import pytest
import yaml
from packaging.requirements import Requirement

from tests.conftest import REPO_ROOT
from tests.deploy.images import final_stage, pip_installs, project_extras, read_dockerfile

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
DEPLOY = REPO_ROOT / "deploy"

SERVICE_PACKAGES = {"fastapi", "uvicorn", "sqlalchemy", "alembic", "psycopg", "psycopg2-binary"}
TORCH_PACKAGES = {"torch", "torchvision", "scikit-learn"}


def names(lines: list[str]) -> set[str]:
    return {Requirement(line).name.lower() for line in lines}


def extra(name: str) -> set[str]:
    return names(PROJECT["optional-dependencies"][name])


BASE = names(PROJECT["dependencies"])


def test_the_base_install_is_the_light_contract():
    assert {"pydantic", "httpx", "typer", "pyyaml"} <= BASE
    heavy = BASE & (SERVICE_PACKAGES | TORCH_PACKAGES | {"optuna", "numpy", "safetensors"})
    assert not heavy, f"the base install pulls in {sorted(heavy)}: move them to an extra"


def test_the_api_extra_has_the_service_stack_and_no_torch():
    api = extra("api")
    assert {"fastapi", "uvicorn", "sqlalchemy", "alembic", "optuna", "psycopg"} <= api
    assert "prometheus-client" in api and "cmaes" in api
    assert not api & TORCH_PACKAGES, f"the api extra installs {sorted(api & TORCH_PACKAGES)}"


def test_the_worker_extra_has_torch_and_no_service_stack():
    worker = extra("worker")
    assert {"torch", "torchvision", "scikit-learn", "safetensors"} <= worker
    assert not worker & SERVICE_PACKAGES, f"the worker extra installs {worker & SERVICE_PACKAGES}"
    assert "optuna" not in worker


def test_psycopg2_is_gone_and_sqlalchemy_maps_plain_postgresql_urls_to_psycopg3():
    every = BASE.union(*(extra(n) for n in PROJECT["optional-dependencies"]))
    assert "psycopg2-binary" not in every
    (sqlalchemy,) = [
        Requirement(r)
        for r in PROJECT["optional-dependencies"]["api"]
        if r.startswith("sqlalchemy")
    ]
    assert not sqlalchemy.specifier.contains("2.0.99") and sqlalchemy.specifier.contains("2.1.0")


def test_the_dashboard_reads_with_the_same_optuna_and_driver_as_the_service():
    def requirements(name: str) -> dict[str, Requirement]:
        return {
            Requirement(r).name.lower(): Requirement(r)
            for r in PROJECT["optional-dependencies"][name]
        }

    dashboard, api = requirements("dashboard"), requirements("api")
    assert "optuna-dashboard" in dashboard
    assert dashboard["optuna"].specifier == api["optuna"].specifier
    assert dashboard["psycopg"] == api["psycopg"]


def test_dev_is_every_role_and_the_test_tools():
    dev = [Requirement(r) for r in PROJECT["optional-dependencies"]["dev"]]
    (itself,) = [r for r in dev if r.name == PROJECT["name"]]
    assert itself.extras == {"api", "worker", "dashboard"}
    assert {"pytest", "ruff", "dockerfile-parse"} <= {r.name for r in dev}


def test_the_makefile_installs_dev():
    assert "pip install -q -e '.[dev]'" in (REPO_ROOT / "Makefile").read_text()


def test_the_requirement_files_are_gone():
    assert not list(DEPLOY.glob("requirements-*.txt"))


@pytest.mark.parametrize(
    ("dockerfile", "role"),
    [
        ("Dockerfile.api", "api"),
        ("Dockerfile.worker", "worker"),
        ("Dockerfile.dashboard", "dashboard"),
    ],
)
def test_each_image_installs_the_project_with_its_roles_extra(dockerfile, role):
    installs = pip_installs(final_stage(read_dockerfile(DEPLOY / dockerfile)))
    extras = [project_extras(w) for _, words in installs for w in words]
    assert [e for e in extras if e is not None] == [[role]], (
        f"{dockerfile} should install the project once, as .[{role}]"
    )
    for _, words in installs:
        assert "--no-deps" not in words and "-r" not in words, words


def test_database_urls_use_the_driver_the_extras_install():
    from tests.deploy.composefile import strings

    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    urls = [v for _, v in strings(compose) if v.startswith("postgresql")]
    assert urls
    for url in urls:
        driver = url.split("://")[0].partition("+")[2] or "psycopg"
        assert driver == "psycopg", f"{url} needs a driver that no extra installs"
