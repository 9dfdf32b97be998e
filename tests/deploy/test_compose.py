"""docker-compose.yml: valid Compose, the five services, their order, health and secrets."""

from __future__ import annotations

import re
import subprocess

import jsonschema
import pytest

from .composefile import (
    command_text,
    duration_seconds,
    gpu_reservations,
    hard_coded_secrets,
    optional_secret_references,
    references,
    strings,
)
from .conftest import DEPLOY, REPO_ROOT

SERVICES = {"postgres", "migrate", "api", "worker", "dashboard"}
REQUIRED_SECRETS = {
    "POSTGRES_PASSWORD",
    "DASHBOARD_DB_PASSWORD",
    "TUNEFLEET_TOKEN_SECRET",
    "TUNEFLEET_WORKER_TOKEN",
}


def _schema_errors(schema, document) -> list[str]:
    # The schema declares draft-07 as "https://json-schema.org/draft-07/schema",
    # without the "#" that jsonschema's lookup expects.
    declared = schema.get("$schema", "")
    if "draft-07" in declared:
        validator_class = jsonschema.Draft7Validator
    else:
        validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(document)
    ]


def _depends(service) -> dict[str, str]:
    return {name: spec["condition"] for name, spec in (service.get("depends_on") or {}).items()}


def test_compose_file_validates_against_the_compose_schema(compose, compose_schema):
    assert _schema_errors(compose_schema, compose) == []


def test_schema_validation_catches_a_misspelt_key(compose_schema):
    broken = {"services": {"api": {"image": "x", "helthcheck": {"test": ["CMD", "true"]}}}}
    assert _schema_errors(compose_schema, broken)


def test_compose_defines_the_five_services(compose):
    assert set(compose["services"]) == SERVICES


def test_postgres_16_keeps_its_data_in_a_named_volume_and_checks_with_pg_isready(compose):
    postgres = compose["services"]["postgres"]
    assert re.fullmatch(r"postgres:16(\.\d+)*(-[\w.]+)?", postgres["image"])
    data = [v for v in postgres["volumes"] if v.endswith(":/var/lib/postgresql/data")]
    assert len(data) == 1
    volume = data[0].split(":")[0]
    assert volume in compose["volumes"], "the data volume must be a named volume"
    test = " ".join(postgres["healthcheck"]["test"])
    assert "pg_isready" in test
    # The image's init phase serves the Unix socket only; a TCP check cannot pass early.
    assert "-h 127.0.0.1" in test or "-h localhost" in test


def test_migrate_runs_once_then_registers_the_worker_token(compose):
    migrate = compose["services"]["migrate"]
    text = command_text(migrate)
    assert migrate.get("restart", "no") == "no"
    steps = [s.strip() for s in text.split("&&")]
    assert steps[0].endswith("tunefleet migrate")
    assert re.search(
        r"tunefleet token create --scope worker --owner \S+ --value-env TUNEFLEET_WORKER_TOKEN\b",
        steps[1],
    ), steps[1]
    assert "TUNEFLEET_WORKER_TOKEN" in migrate["environment"]
    # The token is printed by `token create`; it must not end up in `docker compose logs`.
    assert "> /dev/null" in steps[1] or ">/dev/null" in steps[1]


def test_api_serves_on_all_interfaces_of_its_container(compose):
    api = compose["services"]["api"]
    assert api["command"] == ["serve", "--host", "0.0.0.0", "--port", "8000"]


def test_api_healthcheck_asks_readyz_with_python_not_curl(compose):
    test = compose["services"]["api"]["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "python"
    script = test[-1]
    assert "urllib.request" in script and "http://127.0.0.1:8000/readyz" in script
    assert "curl" not in " ".join(test)


def test_worker_reserves_exactly_one_nvidia_gpu(compose):
    worker = compose["services"]["worker"]
    (reservation,) = gpu_reservations(worker)
    assert reservation["driver"] == "nvidia"
    assert reservation["count"] == 1
    assert reservation["capabilities"] == ["gpu"]
    assert "device_ids" not in reservation


def test_worker_leases_from_the_api_with_the_shared_token_on_its_gpu(compose):
    command = compose["services"]["worker"]["command"]
    assert command[0] == "worker"
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert options["--service"] == "http://api:8000"
    assert options["--device"] == "cuda:0"
    # The token is in the environment, not in argv where `ps` shows it.
    assert "--token" not in command
    environment = compose["services"]["worker"]["environment"]
    assert references(environment["TUNEFLEET_TOKEN"]) == [("TUNEFLEET_WORKER_TOKEN", ":?")]


def test_no_service_puts_a_worker_token_on_its_command_line(compose):
    for name, service in compose["services"].items():
        command = service.get("command") or []
        words = command if isinstance(command, list) else command.split()
        assert "--token" not in words, f"{name} passes --token in argv"


def test_worker_has_time_to_finish_its_trial_after_sigterm(compose):
    from tunefleet.spec import Budget

    default_trial_timeout = Budget.model_fields["trial_timeout_s"].default
    grace = duration_seconds(compose["services"]["worker"]["stop_grace_period"])
    assert grace > default_trial_timeout


@pytest.mark.parametrize(
    ("service", "dependency", "condition"),
    [
        ("migrate", "postgres", "service_healthy"),
        ("api", "postgres", "service_healthy"),
        ("api", "migrate", "service_completed_successfully"),
        ("worker", "api", "service_healthy"),
        ("dashboard", "migrate", "service_completed_successfully"),
    ],
)
def test_startup_order(compose, service, dependency, condition):
    assert _depends(compose["services"][service]).get(dependency) == condition


def test_every_health_condition_waits_on_a_service_with_a_healthcheck(compose):
    services = compose["services"]
    for name, service in services.items():
        for dependency, condition in _depends(service).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], (
                    f"{name} waits for {dependency} to be healthy, but it has no healthcheck"
                )


def test_dashboard_is_published_on_loopback_only(compose):
    ports = compose["services"]["dashboard"]["ports"]
    assert ports
    for port in ports:
        assert isinstance(port, dict), "use the long port syntax so the host_ip is explicit"
        assert port["host_ip"] == "127.0.0.1"


def test_dashboard_reads_the_database_as_the_read_only_role(compose):
    dashboard = compose["services"]["dashboard"]
    url = dashboard["command"][0]
    assert url.startswith("postgresql+psycopg://dashboard_ro:")
    assert url.endswith("@postgres:5432/tunefleet")
    assert dashboard["command"][1:] == ["--host", "0.0.0.0", "--port", "8080"]


def test_dashboard_role_script_is_mounted_into_the_postgres_init_folder(compose):
    volumes = compose["services"]["postgres"]["volumes"]
    mounts = dict(v.rsplit(":", 2)[:2] if v.count(":") == 2 else v.split(":") for v in volumes)
    assert mounts.get("./deploy/postgres/initdb") == "/docker-entrypoint-initdb.d"
    script = (DEPLOY / "postgres" / "initdb" / "10-dashboard-role.sh").read_text()
    sql_target = mounts["./deploy/postgres/dashboard-role.sql"]
    assert f"-f {sql_target}" in script
    assert "DASHBOARD_DB_PASSWORD" in compose["services"]["postgres"]["environment"]


def test_artifacts_are_one_shared_volume_between_api_and_worker(compose):
    mounts = {}
    for name in ("api", "worker"):
        service = compose["services"][name]
        artifact_dir = service["environment"]["TUNEFLEET_ARTIFACT_DIR"]
        (volume,) = [v.split(":")[0] for v in service["volumes"] if v.split(":")[1] == artifact_dir]
        mounts[name] = volume
    assert mounts["api"] == mounts["worker"]
    assert mounts["api"] in compose["volumes"]


def test_settings_passed_to_tunefleet_are_real_settings(compose):
    from service.config import Settings
    from workers.config import WorkerSettings

    known = {f"TUNEFLEET_{name.upper()}" for name in Settings.model_fields}
    known |= {f"TUNEFLEET_{name.upper()}" for name in WorkerSettings.model_fields}
    known.add("TUNEFLEET_WORKER_TOKEN")  # read by the migrate command line, not by Settings
    for name in ("migrate", "api", "worker"):
        unknown = set(compose["services"][name].get("environment", {})) - known
        assert not unknown, f"{name} sets {unknown}, which no settings class reads"


def test_build_files_and_bind_mounts_exist(compose):
    for name, service in compose["services"].items():
        if "build" in service:
            build = service["build"]
            assert (REPO_ROOT / build["context"] / build["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (REPO_ROOT / source).exists(), f"{name} mounts missing {source}"


def test_no_secret_is_written_into_the_compose_file(compose):
    assert hard_coded_secrets(compose) == []


def test_every_secret_is_required_with_a_message(compose):
    assert optional_secret_references(compose) == []
    referenced = {name for _, value in strings(compose) for name, _ in references(value)}
    assert referenced >= REQUIRED_SECRETS


def test_secret_checks_catch_literal_and_optional_secrets():
    leaky = {
        "services": {
            "api": {
                "environment": {
                    "TUNEFLEET_TOKEN_SECRET": "hunter2",
                    "TUNEFLEET_DATABASE_URL": "postgresql://tf:hunter2@db/tf",
                },
                "command": ["worker", "--token", "abc123"],
            },
            "db": {"environment": {"POSTGRES_PASSWORD": "${POSTGRES_PASSWORD}"}},
        }
    }
    assert len(hard_coded_secrets(leaky)) == 3
    assert len(optional_secret_references(leaky)) == 1


def test_env_example_lists_every_required_variable_empty():
    lines = (DEPLOY / "env.example").read_text().splitlines()
    values = dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))
    assert set(values) == REQUIRED_SECRETS
    assert all(v == "" for v in values.values()), "env.example must not carry real secrets"


def test_env_file_is_not_committed():
    tracked = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "ls-files", ".env", "deploy/.env"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert tracked == []
