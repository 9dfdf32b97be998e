"""What the API process keeps of the studies it leases from (service/study_cache.py)."""

from __future__ import annotations

from typing import Any

import pytest

from service import study_cache
from service.study_cache import _loaded_studies
from tests.service.api.conftest import LiveApi, create_study, in_process_app


def _run(api: LiveApi, study_id: int, n: int, worker: str) -> list[dict[str, Any]]:
    """Lease and complete `n` trials as a worker does; the assignments."""
    client = api.as_("gpu-node-1")
    done = []
    for _ in range(n):
        answer = client.post("/api/v1/leases", json={"worker_id": worker})
        assert answer.status_code == 201, answer.text
        assignment = answer.json()
        assert assignment["study_id"] == study_id
        completed = client.post(
            f"/api/v1/trials/{assignment['trial_id']}/complete",
            json={"values": {"accuracy": assignment["params"]["lr"]}},
            headers={"X-Lease-Secret": assignment["lease_secret"]},
        )
        assert completed.status_code == 200, completed.text
        done.append(assignment)
    return done


def _loaded(api: LiveApi) -> dict[int, study_cache.LoadedStudy]:
    """This app's loaded studies by study id (the cache is the process's: other test
    modules' apps, on databases of their own, may have studies of the same ids)."""
    storage = id(api.app.state.storage)
    return {key[1]: e for key, e in _loaded_studies.items() if key[0] == storage}


def _entry(api: LiveApi, study_id: int) -> study_cache.LoadedStudy:
    return _loaded(api)[study_id]


def _only_running(api: LiveApi, **spec: Any) -> int:
    """A new study, the others paused so that the leases go to it."""
    admin = api.as_("root")
    for study in admin.get("/api/v1/studies", params={"state": "running", "limit": 200}).json()[
        "data"
    ]:
        admin.post(f"/api/v1/studies/{study['id']}/pause")
    return create_study(api.as_("alice"), **spec)["id"]


def test_random_search_keeps_no_finished_trial_in_the_process(live_api: LiveApi):
    study_id = _only_running(
        live_api, sampler={"type": "random", "seed": 3}, budget={"max_trials": 12, "epochs": 1}
    )
    done = _run(live_api, study_id, 8, "random-worker")
    entry = _entry(live_api, study_id)
    assert not entry.reads_history
    assert entry.cached_trial_count() == 0
    trials, counts = entry.for_lease()
    assert trials == [] and counts["COMPLETE"] == 8
    # The budget still holds: 4 more trials, then none.
    done += _run(live_api, study_id, 4, "random-worker")
    assert len({a["number"] for a in done}) == 12
    answer = live_api.as_("gpu-node-1").post("/api/v1/leases", json={"worker_id": "random-worker"})
    assert answer.status_code == 204


def test_a_sampler_that_reads_history_sees_every_trial(live_api: LiveApi):
    study_id = _only_running(
        live_api, sampler={"type": "tpe", "seed": 3}, budget={"max_trials": 12, "epochs": 1}
    )
    _run(live_api, study_id, 5, "tpe-worker")
    entry = _entry(live_api, study_id)
    trials, counts = entry.for_lease()
    assert entry.reads_history and len(trials) == 5 and counts["COMPLETE"] == 5
    assert entry.cached_trial_count() == 5


def test_the_cache_drops_the_least_recently_used_studies_beyond_its_trial_bound(
    live_api: LiveApi, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(study_cache, "MAX_CACHED_TRIALS", 5)
    first = _only_running(live_api, sampler={"type": "tpe"}, budget={"max_trials": 50})
    _run(live_api, first, 4, "lru-worker")
    second = _only_running(live_api, sampler={"type": "tpe"}, budget={"max_trials": 50})
    _run(live_api, second, 4, "lru-worker")
    # A lease reads the trials finished before it: at the second study's 4th lease
    # the two studies held 3 + 3 trials, over 5. The first study left; the one in
    # use stays.
    assert first not in _loaded(live_api)
    assert _entry(live_api, second).cached_trial_count() == 3
    # Leased again, it is read again and goes on where it was.
    live_api.as_("root").post(f"/api/v1/studies/{second}/pause")
    live_api.as_("root").post(f"/api/v1/studies/{first}/resume")
    (again,) = _run(live_api, first, 1, "lru-worker")
    assert again["number"] == 4
    assert second not in _loaded(live_api)


def test_the_trial_bound_is_the_api_setting(
    live_api: LiveApi, monkeypatch: pytest.MonkeyPatch, tmp_path
):
    monkeypatch.setattr(study_cache, "MAX_CACHED_TRIALS", study_cache.MAX_CACHED_TRIALS)
    monkeypatch.setenv("TUNEFLEET_MAX_CACHED_TRIALS", "7")
    in_process_app(live_api.database_url, tmp_path)
    assert study_cache.MAX_CACHED_TRIALS == 7


def test_a_study_whose_optuna_study_was_deleted_behind_tunefleet_is_skipped(live_api: LiveApi):
    import optuna

    from tests.service.api.conftest import optuna_storage

    gone = _only_running(live_api, sampler={"type": "random"}, priority=5)
    live_api.as_("root").post(f"/api/v1/studies/{gone}/pause")
    other = _only_running(live_api, sampler={"type": "random"})
    live_api.as_("root").post(f"/api/v1/studies/{gone}/resume")
    detail = live_api.as_("alice").get(f"/api/v1/studies/{gone}").json()
    optuna.delete_study(study_name=detail["optuna_study_name"], storage=optuna_storage(live_api))
    (assignment,) = _run(live_api, other, 1, "skip-worker")
    assert assignment["study_id"] == other
