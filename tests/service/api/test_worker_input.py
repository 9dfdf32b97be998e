"""Worker calls with text no database column can hold: a 422 naming the field, nothing
written (a NUL character in a lease's device or a failure's reason was a 500)."""

from __future__ import annotations

import pytest

from tests.service.api.conftest import LiveApi, create_study, error_of


@pytest.mark.parametrize(
    ("route", "body", "path"),
    [
        ("/api/v1/leases", {"worker_id": "w", "device": "cu\x00da"}, ["device"]),
        ("/api/v1/leases/batch", {"worker_id": "w", "device": "\x00", "count": 2}, ["device"]),
        (
            "/api/v1/leases",
            {"worker_id": "w", "warm_backbones": ["timm:a\x00"]},
            ["warm_backbones"],
        ),
    ],
)
def test_a_lease_with_a_nul_character_is_422(
    live_api: LiveApi, route: str, body: dict, path: list[str]
) -> None:
    answer = live_api.as_("gpu-node-1").post(route, json=body)
    assert answer.status_code == 422, answer.text
    assert error_of(answer)["path"] == path
    assert "NUL" in error_of(answer)["message"]


def test_a_failure_reason_with_a_nul_character_is_422_and_the_trial_stays_leased(
    live_api: LiveApi,
) -> None:
    study = create_study(live_api.as_("root"), sampler={"type": "random"}, priority=100)
    worker = live_api.as_("gpu-node-1")
    assignment = worker.post("/api/v1/leases", json={"worker_id": "nul-worker"}).json()
    assert assignment["study_id"] == study["id"]
    secret = {"X-Lease-Secret": assignment["lease_secret"]}
    route = f"/api/v1/trials/{assignment['trial_id']}"
    answer = worker.post(f"{route}/fail", json={"reason": "bad\x00input"}, headers=secret)
    assert answer.status_code == 422, answer.text
    assert error_of(answer)["path"] == ["reason"]
    shown = live_api.as_("root").get(f"/api/v1/studies/{study['id']}/trials/{assignment['number']}")
    assert shown.json()["state"] == "running"
    # The same call without the NUL goes through.
    assert (
        worker.post(f"{route}/fail", json={"reason": "bad input"}, headers=secret).status_code
        == 200
    )
