"""Warm start with `observe`: the sampler reads past studies' completed trials as
observations, which are neither trials of the new study nor part of its budget."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from service import study_cache
from service.db import session_scope
from service.models import StudyRecord
from service.warm_observe import ObservingSampler
from service.warm_start import WARM_START_ATTR
from tests.service.api.conftest import LiveApi, create_study, error_of, study_spec
from tests.service.api.test_warm_start import add_completed
from tunefleet.protocol import DATASET_FINGERPRINT_ATTR

STUDIES = "/api/v1/studies"
WORKER = "gpu-node-1"
SEED = 0  # a seeded TPE, so that what it draws is deterministic
PAST_TRIALS = 30
_workers = itertools.count()


def in_corner(params: dict[str, Any]) -> bool:
    """The corner of the conftest's space where every past trial lies."""
    return params["lr"] < 1e-3 and params["activation"] == "relu" and params["head_depth"] == 1


def corner_trials(n: int = PAST_TRIALS) -> list[tuple[dict[str, Any], list[float]]]:
    """Completed trials, all in the corner (lr in [1e-4, 2e-4], relu, one head layer)."""
    rng = random.Random(7)
    return [
        (
            {"lr": 10 ** rng.uniform(-4, -3.7), "activation": "relu", "head_depth": 1},
            [0.8 + 0.1 * rng.random()],
        )
        for _ in range(n)
    ]


def observing(**warm: Any) -> dict[str, Any]:
    return {"sampler": {"type": "tpe", "seed": SEED}, "warm_start": {"observe": True, **warm}}


def lease(api: LiveApi, study: dict[str, Any]) -> dict[str, Any] | None:
    """The next trial a worker gets of `study`, or None when it has no more work; every
    other running study is paused first, so that the lease goes to this one."""
    root = api.as_("root")
    running = root.get(STUDIES, params={"state": "running", "limit": 200}).json()["data"]
    for other in running:
        if other["id"] != study["id"]:
            assert root.post(f"{STUDIES}/{other['id']}/pause").status_code == 200
    if root.get(f"{STUDIES}/{study['id']}").json()["state"] == "paused":
        assert root.post(f"{STUDIES}/{study['id']}/resume").status_code == 200
    answer = api.as_(WORKER).post(
        "/api/v1/leases", json={"worker_id": f"w-{next(_workers)}", "device": "cpu"}
    )
    if answer.status_code == 204:
        return None
    assert answer.status_code == 201, answer.text
    assignment = answer.json()
    assert assignment["study_id"] == study["id"]
    return assignment


def complete(api: LiveApi, assignment: dict[str, Any], value: float) -> None:
    answer = api.as_(WORKER).post(
        f"/api/v1/trials/{assignment['trial_id']}/complete",
        json={"values": {"accuracy": value}},
        headers={"X-Lease-Secret": assignment["lease_secret"]},
    )
    assert answer.status_code == 200, answer.text


def detail(api: LiveApi, study: dict[str, Any]) -> dict[str, Any]:
    answer = api.as_("alice").get(f"{STUDIES}/{study['id']}")
    assert answer.status_code == 200, answer.text
    return answer.json()


def sampler_of(api: LiveApi, study: dict[str, Any]) -> ObservingSampler:
    """The sampler this process leases the study's trials with."""
    with session_scope(api.app.state.engine) as session:
        row = session.get(StudyRecord, study["id"])
        assert row is not None
        entry = study_cache.study_of(api.app.state.storage, row)
    assert isinstance(entry.study.sampler, ObservingSampler)
    return entry.study.sampler


def test_the_first_sampled_trial_lies_where_the_past_study_was(live_api: LiveApi) -> None:
    alice = live_api.as_("alice")
    past = create_study(alice)
    add_completed(live_api, past, corner_trials())
    cold = create_study(alice, sampler={"type": "tpe", "seed": SEED})
    warm = create_study(alice, **observing(studies=[past["name"]], top_k=0))
    assert warm["trial_counts"]["waiting"] == 0  # top_k 0: nothing enqueued
    assert warm["warm_start"] == {"observations": PAST_TRIALS, "sources": [past["name"]]}

    first_warm, first_cold = lease(live_api, warm), lease(live_api, cold)
    assert first_warm is not None and first_cold is not None
    # With the same seed, the cold study's first trial is a random startup draw outside the
    # corner; the warm one's is TPE's, modelled on the 30 observations.
    assert in_corner(first_warm["params"]), first_warm["params"]
    assert not in_corner(first_cold["params"]), first_cold["params"]


def test_observations_use_no_budget_and_are_no_trials_of_the_study(live_api: LiveApi) -> None:
    alice = live_api.as_("alice")
    past = create_study(alice)
    add_completed(live_api, past, corner_trials())
    budget = 4
    study = create_study(
        alice,
        budget={"max_trials": budget, "epochs": 1},
        **observing(studies=[past["name"]], top_k=0),
    )
    ran = 0
    while (assignment := lease(live_api, study)) is not None:
        complete(live_api, assignment, 0.5 + 0.01 * ran)
        ran += 1
        assert ran <= budget
    assert ran == budget
    shown = detail(live_api, study)
    assert shown["trial_counts"]["complete"] == budget
    assert shown["warm_start"]["observations"] == PAST_TRIALS
    assert shown["best_trials"][0]["number"] == budget - 1  # the study's own best
    listed = alice.get(f"{STUDIES}/{study['id']}/trials", params={"limit": 200}).json()
    assert listed["count"] == budget
    assert sorted(t["number"] for t in listed["data"]) == list(range(budget))


def test_a_reload_rebuilds_the_observations_from_the_sources_resolved_at_creation(
    live_api: LiveApi,
) -> None:
    bob = live_api.as_("bob")
    fp = {DATASET_FINGERPRINT_ATTR: "c" * 64}
    data = "builtin:digits-shifted-s1"
    past = create_study(bob, dataset=data)
    add_completed(live_api, past, corner_trials(), fp)
    study = create_study(bob, dataset=data, **observing(studies="auto", top_k=0))
    assert study["warm_start"] == {"observations": PAST_TRIALS, "sources": [past["name"]]}
    assert lease(live_api, study) is not None
    before = sampler_of(live_api, study).observations
    assert len(before) == PAST_TRIALS
    assert {t.user_attrs[WARM_START_ATTR].split("/")[0] for t in before} == {past["name"]}

    # After creation: a newer study that `auto` would now pick, and newer trials in the
    # source. Neither is observed: the sources and their trials are those of creation.
    newer = create_study(bob, dataset=data)
    add_completed(live_api, newer, corner_trials(5), fp)
    add_completed(live_api, past, corner_trials(3), fp)
    study_cache.forget_loaded_study(study["id"])  # as a restarted API process

    after = sampler_of(live_api, study).observations
    assert [(t.params, t.values, t.user_attrs) for t in after] == [
        (t.params, t.values, t.user_attrs) for t in before
    ]
    second = lease(live_api, study)
    assert second is not None and second["number"] == 1


def test_a_deleted_source_leaves_a_study_that_still_samples(live_api: LiveApi) -> None:
    alice = live_api.as_("alice")
    past = create_study(alice)
    add_completed(live_api, past, corner_trials(12))
    study = create_study(alice, **observing(studies=[past["name"]]))
    assert alice.delete(f"{STUDIES}/{past['id']}").status_code == 204
    study_cache.forget_loaded_study(study["id"])
    assert sampler_of(live_api, study).observations == []
    assert lease(live_api, study) is not None


@pytest.mark.parametrize(
    ("warm", "sampler", "path"),
    [
        ({"observe": True}, {"type": "random"}, ["warm_start", "observe"]),
        ({"observe": True}, {"type": "nsga2"}, ["warm_start", "observe"]),
        ({"observe": False, "top_k": 0}, {"type": "tpe"}, ["warm_start", "top_k"]),
        ({"observe": "often"}, {"type": "tpe"}, ["warm_start", "observe"]),
    ],
)
def test_a_bad_observe_is_422_with_its_path(
    live_api: LiveApi, warm: dict[str, Any], sampler: dict[str, Any], path: list[str]
) -> None:
    alice = live_api.as_("alice")
    past = create_study(alice)
    spec = study_spec(sampler=sampler, warm_start={"studies": [past["name"]], **warm})
    answer = alice.post(STUDIES, json=spec)
    assert answer.status_code == 422, answer.text
    assert error_of(answer)["path"] == path
    listed = alice.get(STUDIES, params={"limit": 200}).json()["data"]
    assert spec["name"] not in [s["name"] for s in listed]


def test_without_observe_the_detail_has_no_observations(live_api: LiveApi) -> None:
    alice = live_api.as_("alice")
    past = create_study(alice)
    add_completed(live_api, past, corner_trials(3))
    study = create_study(alice, warm_start={"studies": [past["name"]]})
    assert study["warm_start"] is None
    assert study["spec"]["warm_start"]["observe"] is False
