"""Schema-driven fuzzing of the live API: whatever a client sends, never a 5xx.

Schemathesis reads /openapi.json and generates requests for every operation,
valid ones and invalid ones, some aimed at an existing study so that the
handlers behind the 404 are reached too. Bounded by TUNEFLEET_FUZZ_EXAMPLES
(examples per operation and mode) so that it runs in a couple of minutes.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.service.api import conftest as api_fixtures
from tests.service.api.conftest import LiveApi, create_study

pytestmark = pytest.mark.slow
live_api = api_fixtures.live_api  # the live server fixture of the API tests

EXAMPLES = int(os.environ.get("TUNEFLEET_FUZZ_EXAMPLES", "25"))
WORKER_PATHS = ("/api/v1/leases", "/api/v1/trials/")


def fuzz_operations(
    api: LiveApi, *, who: str, select, path_parameters: dict[str, Any]
) -> tuple[list[str], Counter]:
    """Fuzz the selected operations as `who`: every 5xx described, and the status counts."""
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    token = api.tokens[who]
    failures: list[str] = []
    statuses: Counter = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        if not select(operation.path):
            continue
        fixed = {k: v for k, v in path_parameters.items() if f"{{{k}}}" in operation.path}
        strategies = [operation.as_strategy(generation_mode=mode) for mode in GenerationMode]
        if fixed:
            strategies.append(operation.as_strategy(path_parameters=fixed))
            strategies.append(
                operation.as_strategy(
                    generation_mode=GenerationMode.NEGATIVE, path_parameters=fixed
                )
            )

        @settings(
            max_examples=EXAMPLES * len(strategies),
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=st.one_of(strategies))
        def call(case) -> None:
            headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}
            response = case.call(base_url=api.url, headers=headers, timeout=30)
            statuses[response.status_code] += 1
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} query={case.query!r} "
                    f"body={str(case.body)[:300]!r} -> {response.status_code} "
                    f"{response.text[:300]}"
                )

        call()
    return failures, statuses


def test_user_api_never_answers_5xx(live_api: LiveApi) -> None:
    study = create_study(live_api.as_("alice"))
    live_api.as_("alice").post(
        f"/api/v1/studies/{study['id']}/trials", json={"params": {"lr": 0.01}}
    )
    failures, statuses = fuzz_operations(
        live_api,
        who="alice",
        # Revoking would end the fuzzing token itself; test_tokens.py covers that route.
        select=lambda path: not path.startswith(WORKER_PATHS) and not path.endswith("/revoke"),
        path_parameters={"study_id": study["id"], "number": 0, "name": study["name"]},
    )
    assert not failures, "\n".join(failures[:20])
    # The fuzzing reached the handlers, not only the validation in front of them.
    assert statuses[200] and statuses[201] and statuses[422] and statuses[404], statuses
    # The server is still healthy and consistent afterwards.
    assert live_api.as_("alice").get("/api/v1/studies").status_code == 200


def test_worker_token_fuzzing_the_user_api_never_gets_5xx(live_api: LiveApi) -> None:
    failures, statuses = fuzz_operations(
        live_api,
        who="gpu-node-1",
        select=lambda path: path.startswith("/api/v1/studies"),
        path_parameters={},
    )
    assert not failures, "\n".join(failures[:20])
    assert 403 in statuses, statuses
