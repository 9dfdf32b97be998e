# ruff: noqa: F811 - the fixtures come from tests.test_fleet_support
"""Real backbones through the service and a real worker: a timm source on an image
folder, a study searching the backbone over timm and torchvision, and the lease
preference for the backbones a worker holds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.backbone_caches import (
    TIMM_MODEL,
    TORCHVISION_MODEL,
    write_imagefolder,
    write_timm_cache,
    write_torchvision_cache,
)
from tests.conftest import REPO_ROOT, subprocess_env
from tests.test_fleet_support import (  # noqa: F401 - fixtures
    FleetEnv,
    fleet_env,
    fleet_env_module,
    wait_until,
)

TIMM = f"timm:{TIMM_MODEL}"
TORCHVISION = f"torchvision:{TORCHVISION_MODEL}"


@pytest.fixture(scope="module")
def offline_cache(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("worker-cache")
    write_timm_cache(cache)
    write_torchvision_cache(cache)
    return cache


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_imagefolder(tmp_path_factory.mktemp("images") / "shapes")


def engine_worker(env: FleetEnv, cache: Path, name: str, max_trials: int) -> subprocess.Popen:
    """A real worker running the real trial engine, offline, on the CPU."""
    run_env = subprocess_env(
        cache_dir=cache,
        artifact_dir=env.log_dir / "artifacts",
        poll_interval_max_s=0.5,
        token=env.worker_token,
        # The run's temporary folder holds the generated image folders.
        data_roots=env.log_dir.parent,
    )
    run_env.update({"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    log = open(env.log_dir / f"{name}.log", "w")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "workers",
            "--service",
            env.api.url,
            "--worker-id",
            name,
            "--device",
            "cpu",
            "--max-trials",
            str(max_trials),
            "--idle-exit",
            "20",
        ],
        env=run_env,
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    proc.name = name  # type: ignore[attr-defined]
    env.workers.append(proc)
    return proc


def image_study(images: Path, **overrides) -> dict:
    return {
        "dataset": f"imagefolder:{images}",
        "search_space": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
        "fixed_params": {"batch_size": 8, "unfreeze_blocks": 1},
        "budget": {"max_trials": 2, "epochs": 1, "max_retries": 0},
        **overrides,
    }


def test_a_timm_study_on_an_image_folder_completes_offline(fleet_env, offline_cache, images):
    study = fleet_env.create_study(
        "timm-images",
        **image_study(images, source_model=TIMM, source_weights="pretrained"),
    )
    worker = engine_worker(fleet_env, offline_cache, "timm-worker", max_trials=2)
    assert fleet_env.wait_workers([worker], timeout_s=240) == [0], fleet_env.worker_log(worker)
    trials = fleet_env.trials(study)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"], fleet_env.worker_log(worker)
    assert all(t.user_attrs["backbone_stages"] == 5 for t in trials)


def test_a_study_searching_the_backbone_completes_over_timm_and_torchvision(
    fleet_env, offline_cache, images
):
    study = fleet_env.create_study(
        "search-backbone",
        **image_study(
            images,
            source_model=TIMM,
            search_space={"source_model": {"type": "categorical", "choices": [TIMM, TORCHVISION]}},
            source_weights={TIMM: "pretrained", TORCHVISION: "IMAGENET1K_V1"},
            sampler={"type": "grid"},
        ),
    )
    worker = engine_worker(fleet_env, offline_cache, "search-worker", max_trials=2)
    assert fleet_env.wait_workers([worker], timeout_s=300) == [0], fleet_env.worker_log(worker)
    trials = fleet_env.trials(study)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"], fleet_env.worker_log(worker)
    assert {t.params["source_model"] for t in trials} == {TIMM, TORCHVISION}
    assert {t.user_attrs["source_model"] for t in trials} == {TIMM, TORCHVISION}


def test_an_offline_miss_fails_the_trial_with_one_line(fleet_env, images, tmp_path):
    study = fleet_env.create_study(
        "offline-miss",
        **image_study(
            images,
            source_model=TIMM,
            source_weights="pretrained",
            budget={"max_trials": 1, "epochs": 1, "max_retries": 0},
        ),
    )
    worker = engine_worker(fleet_env, tmp_path / "empty-cache", "miss-worker", max_trials=1)
    fleet_env.wait_workers([worker], timeout_s=120)
    (trial,) = fleet_env.trials(study)
    assert trial.state.name == "FAIL"
    reason = str(
        trial.user_attrs.get("fail_reason")
        or trial.system_attrs.get("fail_reason")
        or trial.user_attrs
    )
    assert "tunefleet prefetch -f SPEC" in reason and TIMM in reason


def test_the_service_prefers_the_study_of_a_backbone_the_worker_holds(fleet_env, images):
    plain = fleet_env.create_study("plain-digits")
    timm_study = fleet_env.create_study(
        "warm-timm", **image_study(images, source_model=TIMM, source_weights="pretrained")
    )
    assert plain < timm_study  # with no warm backbone, the older study goes first
    with fleet_env.client() as client:
        warm = client.post(
            "/leases", json={"worker_id": "warm-one", "warm_backbones": [TIMM]}
        ).json()
        cold = client.post("/leases", json={"worker_id": "cold-one"}).json()
    assert warm["study_id"] == timm_study
    assert cold["study_id"] == plain
