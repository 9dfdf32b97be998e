"""deploy/requirements-*.txt stay in step with pyproject.toml."""

from __future__ import annotations

from packaging.requirements import Requirement

from .conftest import DEPLOY

TORCH_PACKAGES = {"torch", "torchvision"}


def _read(path) -> list[Requirement]:
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return [Requirement(line) for line in lines if line]


def _key(requirement: Requirement) -> tuple[str, frozenset[str], str]:
    return (requirement.name.lower(), frozenset(requirement.extras), str(requirement.specifier))


def _declared(pyproject) -> dict[str, Requirement]:
    return {
        Requirement(d).name.lower(): Requirement(d) for d in pyproject["project"]["dependencies"]
    }


def test_api_requirements_are_a_subset_of_pyprojects_dependencies(pyproject):
    declared = {_key(r) for r in _declared(pyproject).values()}
    for requirement in _read(DEPLOY / "requirements-api.txt"):
        assert _key(requirement) in declared, (
            f"{requirement} is not in pyproject.toml's dependencies as written"
        )


def test_api_requirements_hold_every_dependency_but_torch(pyproject):
    listed = {r.name.lower() for r in _read(DEPLOY / "requirements-api.txt")}
    missing = set(_declared(pyproject)) - TORCH_PACKAGES - listed
    assert not missing, f"add {sorted(missing)} to deploy/requirements-api.txt"
    assert not listed & TORCH_PACKAGES


def test_dashboard_requirements_match_pyproject(pyproject):
    declared = _declared(pyproject)
    extra = {
        Requirement(d).name.lower(): Requirement(d)
        for d in pyproject["project"]["optional-dependencies"]["dashboard"]
    }
    wanted = _read(DEPLOY / "requirements-dashboard.txt")
    by_name = {r.name.lower(): r for r in wanted}
    # The dashboard's Optuna must read the schema that the service's Optuna writes.
    assert _key(by_name["optuna"]) == _key(declared["optuna"])
    assert _key(by_name["psycopg2-binary"]) == _key(declared["psycopg2-binary"])
    (pin,) = by_name["optuna-dashboard"].specifier
    assert pin.operator == "=="
    assert extra["optuna-dashboard"].specifier.contains(pin.version)


def test_database_urls_use_a_driver_the_images_install(compose):
    from .composefile import strings

    urls = [v for _, v in strings(compose) if v.startswith("postgresql")]
    assert urls
    api = {r.name.lower() for r in _read(DEPLOY / "requirements-api.txt")}
    dashboard = {r.name.lower() for r in _read(DEPLOY / "requirements-dashboard.txt")}
    for url in urls:
        driver = url.split("://")[0].partition("+")[2] or "psycopg2"
        package = {"psycopg2": "psycopg2-binary", "psycopg": "psycopg"}[driver]
        assert package in api and package in dashboard, url
