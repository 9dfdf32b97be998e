"""A lease retried while the first request is still being served (the worker timed out
and asked again with the same worker_id): both answers are one trial, and no second
trial is left behind for the reaper."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from service import batch_leasing, leasing
from tests.service.api.conftest import LiveApi, create_study

WAIT_S = 30.0


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _only_running(api: LiveApi) -> int:
    admin = api.as_("root")
    for study in admin.get("/api/v1/studies", params={"state": "running", "limit": 200}).json()[
        "data"
    ]:
        admin.post(f"/api/v1/studies/{study['id']}/pause")
    return create_study(api.as_("alice"), sampler={"type": "random"})["id"]


def _active_leases(engine: sa.Engine, worker_id: str) -> list[int]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.text("SELECT trial_id FROM tf_leases WHERE worker_id = :w AND state = 'active'"),
                {"w": worker_id},
            ).scalars()
        )


@pytest.mark.parametrize(
    ("route", "module"), [("/leases", leasing), ("/leases/batch", batch_leasing)]
)
def test_two_lease_requests_of_one_worker_at_once_get_one_trial(
    live_api: LiveApi, monkeypatch: pytest.MonkeyPatch, route: str, module
) -> None:
    study_id = _only_running(live_api)
    worker_id = f"retry-{module.__name__.rpartition('.')[2]}"
    # Both requests look for a lease the worker holds before either has one.
    seen = threading.Semaphore(0)
    original = module.held_leases

    def counted(*args, **kwargs):
        found = original(*args, **kwargs)
        seen.release()
        return found

    monkeypatch.setattr(module, "held_leases", counted)
    engine = sa.create_engine(live_api.database_url)
    body = (
        {"worker_id": worker_id, "count": 1}
        if route.endswith("batch")
        else {"worker_id": worker_id}
    )
    client = live_api.as_("gpu-node-1")
    with engine.connect() as lock, ThreadPoolExecutor(2) as pool:
        # The study's row lock, held here: the first request waits for it mid-lease.
        lock.execute(sa.text("SELECT id FROM tf_studies WHERE id = :i FOR UPDATE"), {"i": study_id})
        answers = [pool.submit(client.post, f"/api/v1{route}", json=body) for _ in range(2)]
        for _ in range(2):
            assert seen.acquire(timeout=WAIT_S), "a lease request did not start"
        lock.commit()  # both are past their first look: let them hand out
        responses = [a.result(timeout=WAIT_S) for a in answers]
    engine.dispose()
    assert [r.status_code for r in responses] == [201, 201], [r.text for r in responses]
    got = [r.json() for r in responses]
    trial_ids = {(a["assignments"][0] if "assignments" in a else a)["trial_id"] for a in got}
    assert len(trial_ids) == 1, got  # one trial for both answers
    assert _active_leases(live_api.app.state.engine, worker_id) == list(trial_ids)
    counts = live_api.as_("alice").get(f"/api/v1/studies/{study_id}").json()["trial_counts"]
    assert counts["running"] == 1 and counts["waiting"] == 0
