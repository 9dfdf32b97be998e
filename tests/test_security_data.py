"""Attacks of an ordinary user on the workers' disks, through the real API and real
worker processes running the real trial engine: spec paths outside the data and
model roots, fail reasons that would hand back what the worker found, and
datasets too large to walk.

Layout of the roots here: ``{base}/data/{owner}`` is each owner's data root on
the API and the workers; the API also allows ``{base}/api-only``, which the
workers do not, so the worker's own check is what stops a study there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import create_database, create_token, drop_database
from tests.test_fleet_support import FleetEnv, make_fleet_env, study_spec

ENGINE = "workers.transfer:run_trial"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("security")


@pytest.fixture(scope="module")
def fleet(base: Path) -> Iterator[FleetEnv]:
    (base / "data" / "alice").mkdir(parents=True)
    (base / "data" / "bob").mkdir(parents=True)
    (base / "api-only").mkdir()
    (base / "models").mkdir()
    url = create_database("tf_security")
    from service.migrate import migrate

    migrate(url)
    try:
        yield from make_fleet_env(
            base,
            url,
            data_roots=f"{base / 'data' / '{owner}'},{base / 'api-only'}",
            model_roots=str(base / "models"),
        )
    finally:
        drop_database(url)


@pytest.fixture(autouse=True)
def clean(fleet: FleetEnv) -> Iterator[None]:
    """Each test's studies are stopped after it, so that a worker runs only the next one's."""
    yield
    fleet.cleanup()


@pytest.fixture(scope="module")
def tokens(fleet: FleetEnv) -> dict[str, str]:
    return {
        who: create_token(fleet.database_url, scope=scope, owner=who)
        for who, scope in (("alice", "user"), ("root", "admin"))
    }


def worker_settings(base: Path, **more: object) -> dict[str, object]:
    return {
        "data_roots": str(base / "data" / "{owner}"),
        "model_roots": str(base / "models"),
        "cache_dir": base / "cache",
        "artifact_dir": base / "artifacts",
        **more,
    }


def write_images(folder: Path, count: int, *, broken: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = folder / f"{i}.png"
        if broken:
            path.write_bytes(b"not a png at all")
        else:
            Image.new("L", (8, 8), color=i * 20).save(path)


def create(fleet: FleetEnv, token: str, name: str, **spec: object):
    with fleet.client(token) as client:
        return client.post("/studies", json=study_spec(name, **spec))


def run_one_trial(fleet: FleetEnv, base: Path, study_id: int, **settings: object) -> str:
    worker = fleet.start_worker(
        "--max-trials", "1", objective=ENGINE, settings=worker_settings(base, **settings)
    )
    fleet.studies.append(study_id)
    assert fleet.wait_workers([worker], timeout_s=180) == [0], fleet.worker_log(worker)
    return fleet.worker_log(worker)


def trial_as(fleet: FleetEnv, token: str, study_id: int) -> dict:
    with fleet.client(token) as client:
        answer = client.get(f"/studies/{study_id}/trials/0")
    assert answer.status_code == 200, answer.text
    return answer.json()


# At study creation ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "spec"),
    [
        ("dataset", {"dataset": "imagefolder:/etc"}),
        ("dataset", {"dataset": "imagefolder:/no/such/folder"}),
        ("dataset", {"dataset": "imagefolder:../bob"}),
        ("dataset", {"dataset": "imagefolder:{base}/data/bob"}),
        ("dataset", {"dataset": "imagefolder:etc-link"}),
        ("source_model", {"source_model": "file:/etc/model.safetensors"}),
        (
            "source_weights",
            {"source_model": "torchvision:resnet18", "source_weights": "/root/w.safetensors"},
        ),
    ],
    ids=["etc", "missing", "dotdot", "other-owner", "symlink", "file-model", "weights"],
)
def test_a_spec_path_outside_the_owners_roots_is_refused_at_creation(
    fleet: FleetEnv,
    tokens: dict[str, str],
    base: Path,
    field: str,
    spec: dict,
    request: pytest.FixtureRequest,
) -> None:
    link = base / "data" / "alice" / "etc-link"
    if not link.is_symlink():
        link.symlink_to("/etc")
    spec = {k: v.replace("{base}", str(base)) for k, v in spec.items()}
    answer = create(fleet, tokens["alice"], "outside-" + request.node.callspec.id, **spec)
    assert answer.status_code == 422, answer.text
    error = answer.json()["detail"]
    assert error["path"] == [field]
    assert "not under an allowed root" in error["message"]
    # Whether the path exists is not said: /etc and a missing folder read alike.
    assert "exist" not in error["message"]
    assert str(base) not in error["message"].replace(str(base / "data" / "bob"), "")


def test_a_path_relative_to_the_owners_root_is_accepted(
    fleet: FleetEnv, tokens: dict[str, str]
) -> None:
    answer = create(fleet, tokens["alice"], "relative-ok", dataset="imagefolder:pets")
    assert answer.status_code == 201, answer.text
    fleet.studies.append(answer.json()["id"])


# On the worker -------------------------------------------------------------------


def test_the_worker_refuses_a_path_outside_its_own_roots_before_opening_it(
    fleet: FleetEnv, tokens: dict[str, str], base: Path
) -> None:
    secret = base / "api-only" / "secret"
    write_images(secret / "id_rsa-prod-db", 3, broken=True)
    write_images(secret / "payroll", 3, broken=True)
    answer = create(fleet, tokens["alice"], "worker-roots", dataset=f"imagefolder:{secret}")
    assert answer.status_code == 201, answer.text  # the API's roots are wider
    log = run_one_trial(fleet, base, answer.json()["id"])
    trial = trial_as(fleet, tokens["alice"], answer.json()["id"])
    assert trial["state"] == "fail"
    assert trial["fail_reason"].startswith("path_not_allowed: dataset:")
    assert "id_rsa" not in trial["fail_reason"] and "payroll" not in trial["fail_reason"]
    assert trial["fail_detail"] is None  # the owner never sees the detail
    admin = trial_as(fleet, tokens["root"], answer.json()["id"])
    assert "data roots" in admin["fail_detail"]
    assert "path_not_allowed" in log


def test_a_fail_reason_names_only_what_the_spec_says_and_the_admin_sees_the_rest(
    fleet: FleetEnv, tokens: dict[str, str], base: Path
) -> None:
    pets = base / "data" / "alice" / "pets"
    write_images(pets / "cat", 4)
    write_images(pets / "id_rsa-prod-db", 4, broken=True)
    answer = create(fleet, tokens["alice"], "leaky-names", dataset="imagefolder:pets")
    assert answer.status_code == 201, answer.text
    log = run_one_trial(fleet, base, answer.json()["id"])
    trial = trial_as(fleet, tokens["alice"], answer.json()["id"])
    reason = trial["fail_reason"]
    assert reason.startswith("dataset_unreadable: dataset: an image under 'pets'"), reason
    assert "id_rsa" not in reason and str(base) not in reason
    assert trial["fail_detail"] is None
    admin = trial_as(fleet, tokens["root"], answer.json()["id"])
    assert "id_rsa-prod-db" in admin["fail_detail"]
    assert "id_rsa-prod-db" in log  # the worker's log has the full story


def test_a_dataset_larger_than_the_walk_limit_fails_before_any_image_is_loaded(
    fleet: FleetEnv, tokens: dict[str, str], base: Path
) -> None:
    big = base / "data" / "alice" / "big"
    for cls in ("a", "b"):
        (big / cls).mkdir(parents=True)
        for i in range(40):
            (big / cls / f"{i}.png").write_bytes(b"never decoded")
    answer = create(fleet, tokens["alice"], "too-big", dataset="imagefolder:big")
    assert answer.status_code == 201, answer.text
    run_one_trial(fleet, base, answer.json()["id"], dataset_max_files=50)
    reason = trial_as(fleet, tokens["alice"], answer.json()["id"])["fail_reason"]
    assert reason.startswith("dataset_too_large: dataset: 'big' holds more than 50"), reason
    assert "TUNEFLEET_DATASET_MAX_FILES" in reason


def test_a_link_inside_a_dataset_that_leaves_the_roots_is_refused(
    fleet: FleetEnv, tokens: dict[str, str], base: Path
) -> None:
    outside = base / "api-only" / "elsewhere"
    write_images(outside, 4)
    linked = base / "data" / "alice" / "linked"
    write_images(linked / "cat", 4)
    os.symlink(outside, linked / "dog")
    answer = create(fleet, tokens["alice"], "linked", dataset="imagefolder:linked")
    assert answer.status_code == 201, answer.text
    run_one_trial(fleet, base, answer.json()["id"])
    reason = trial_as(fleet, tokens["alice"], answer.json()["id"])["fail_reason"]
    assert reason.startswith("path_not_allowed: dataset: a link under 'linked'"), reason
    assert "elsewhere" not in reason
