"""deploy/docker-compose.gpus.yml: one worker per GPU, each pinned to its own device."""

from __future__ import annotations

import re

from .composefile import gpu_reservations, hard_coded_secrets, optional_secret_references
from .test_compose import _schema_errors


def _gpu_workers(gpu_override):
    return gpu_override["services"]


def _merged(compose, gpu_override):
    """The services `docker compose -f docker-compose.yml -f deploy/...gpus.yml` runs."""
    services = dict(compose["services"])
    for name, service in gpu_override["services"].items():
        services[name] = {**services.get(name, {}), **service}
    return services


def test_override_validates_against_the_compose_schema(gpu_override, compose_schema):
    assert _schema_errors(compose_schema, gpu_override) == []


def test_override_only_adds_numbered_workers(gpu_override):
    names = list(_gpu_workers(gpu_override))
    assert names, "the override adds no worker"
    assert all(re.fullmatch(r"worker-\d+", n) for n in names), names


def test_each_added_worker_is_pinned_to_one_gpu_by_id(gpu_override):
    for name, service in _gpu_workers(gpu_override).items():
        (reservation,) = gpu_reservations(service)
        assert reservation["driver"] == "nvidia"
        assert reservation["capabilities"] == ["gpu"]
        # Docker refuses count together with device_ids, and count alone means GPU 0.
        assert "count" not in reservation, name
        assert len(reservation["device_ids"]) == 1, name
        assert reservation["device_ids"] == [name.split("-")[1]], (
            f"{name} should hold GPU {name.split('-')[1]}"
        )


def test_no_two_workers_share_a_gpu(compose, gpu_override):
    # The base worker's "count: 1" is GPU 0, the first of the count.
    assert gpu_reservations(compose["services"]["worker"])[0]["count"] == 1
    held = ["0"]
    for service in _gpu_workers(gpu_override).values():
        held += gpu_reservations(service)[0]["device_ids"]
    assert len(held) == len(set(held)), f"GPUs held twice: {held}"
    assert sorted(int(i) for i in held) == list(range(len(held))), "GPUs must be 0..N-1"


def test_added_workers_run_exactly_like_the_base_worker(compose, gpu_override):
    base = compose["services"]["worker"]
    for name, service in _gpu_workers(gpu_override).items():
        for key in (
            "image",
            "build",
            "command",
            "environment",
            "volumes",
            "depends_on",
            "stop_grace_period",
            "shm_size",
            "init",
            "restart",
        ):
            assert service.get(key) == base.get(key), f"{name}.{key} differs from worker.{key}"
        # Its one GPU is the only one it sees.
        assert service["command"][service["command"].index("--device") + 1] == "cuda:0"


def test_merged_project_refers_only_to_what_exists(compose, gpu_override):
    services = _merged(compose, gpu_override)
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in compose["volumes"], f"{name} mounts undeclared volume {source}"


def test_override_has_no_hard_coded_or_optional_secret(gpu_override):
    assert hard_coded_secrets(gpu_override) == []
    assert optional_secret_references(gpu_override) == []
