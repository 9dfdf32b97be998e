"""The worker routes answer bad input with 4xx, never 500."""

from __future__ import annotations

import httpx

from tests.conftest import create_token


def test_out_of_range_trial_id_is_422_on_every_worker_route(api_server):
    token = create_token(api_server.database_url, scope="worker", owner="fleet")
    with httpx.Client(
        base_url=api_server.url, headers={"Authorization": f"Bearer {token}"}
    ) as client:
        for call in ("heartbeat", "intermediate", "complete", "fail"):
            for trial_id in (2**31, 2**63, 0, -1):
                answer = client.post(f"/api/v1/trials/{trial_id}/{call}", json={})
                assert answer.status_code == 422, (call, trial_id, answer.text)
                assert "trial_id" in answer.text
