"""The OpenAPI document tells the truth: requests generated from /openapi.json, every answer
checked against what the document says.

Schemathesis generates valid and invalid requests for every operation, with a real token
and path parameters that point at a real study, trial, token and lease, so that the
handlers behind the 404s are reached too. Each answer must be no server error, have a
documented status code, content type and headers, and a body that matches the documented
schema; invalid data must be rejected. TUNEFLEET_CONFORMANCE_EXAMPLES bounds the examples
per operation (about a minute here); `python -m bench.openapi_conformance` runs longer.
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.service.api import conftest as api_fixtures
from tests.service.api.conftest import LiveApi, create_study, error_of

pytestmark = pytest.mark.slow
live_api = api_fixtures.live_api  # the live server fixture of the API tests

EXAMPLES = int(os.environ.get("TUNEFLEET_CONFORMANCE_EXAMPLES", "6"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
WORKER_PATHS = ("/api/v1/leases", "/api/v1/trials/")


def check_operations(
    api: LiveApi,
    *,
    token: str,
    select: Callable[[str, str], bool],
    path_parameters: dict,
    extra_headers: dict | None = None,
) -> tuple[list[str], Counter]:
    """Generated requests for the selected operations: every failed check, and the statuses."""
    extra_headers = extra_headers or {}
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.app)
    failures: list[str] = []
    statuses: Counter = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        if not select(operation.method.upper(), operation.path):
            continue
        fixed = {k: v for k, v in path_parameters.items() if f"{{{k}}}" in operation.path}
        strategies = [operation.as_strategy(generation_mode=mode) for mode in GenerationMode]
        if fixed:
            strategies += [
                operation.as_strategy(generation_mode=mode, path_parameters=fixed)
                for mode in GenerationMode
            ]

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
            headers = {**extra_headers, **(case.headers or {}), "Authorization": f"Bearer {token}"}
            try:
                response = case.call(headers=headers)
                case.validate_response(response, checks=CHECKS, headers=headers)
                statuses[response.status_code] += 1
            except Exception as failure:  # every failed check is collected
                failures.append(
                    f"{case.method} {case.formatted_path} query={case.query!r} "
                    f"body={str(case.body)[:200]!r}: {str(failure)[:600]}"
                )

        call()
    return failures, statuses


def _token_id(api: LiveApi, who: str) -> int:
    listed = api.as_("root").get("/api/v1/tokens").json()["data"]
    return next(t["id"] for t in listed if t["owner"] == who)


def test_every_user_operation_answers_as_documented(live_api: LiveApi) -> None:
    alice = live_api.as_("alice")
    study = create_study(alice)
    alice.post(f"/api/v1/studies/{study['id']}/trials", json={"params": {"lr": 0.01}})
    throwaway = live_api.as_("root").post(
        "/api/v1/tokens", json={"scope": "user", "owner": "alice", "expires_in": "1h"}
    )
    failures, statuses = check_operations(
        live_api,
        token=live_api.tokens["alice"],
        # Deleting would end the fixed study early; revoking the fuzzing token ends the run.
        # Both have their own tests (below, and test_tokens.py).
        select=lambda method, path: (
            not path.startswith(WORKER_PATHS)
            and method != "DELETE"
            and not path.endswith("/revoke")
        ),
        path_parameters={
            "study_id": study["id"],
            "number": 0,
            "name": study["name"],
            "token_id": throwaway.json()["id"],
        },
    )
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:15])
    # The generated requests reached the handlers, not only the validation in front: reads
    # (200), missing objects (404), and writes past validation, created (201) or refused by
    # the state they met (409; which of the two a handful of generated bodies meets varies).
    assert statuses[200] and statuses[422] and statuses[404], statuses
    assert statuses[201] + statuses[409], statuses
    assert alice.get("/api/v1/studies").status_code == 200


def test_every_worker_operation_answers_as_documented(live_api: LiveApi) -> None:
    create_study(live_api.as_("alice"))
    worker = live_api.as_("gpu-node-1")
    lease = worker.post("/api/v1/leases", json={"worker_id": "conformance", "device": "cpu"})
    assert lease.status_code == 201, lease.text
    failures, statuses = check_operations(
        live_api,
        token=live_api.tokens["gpu-node-1"],
        select=lambda method, path: path.startswith(WORKER_PATHS),
        path_parameters={"trial_id": lease.json()["trial_id"]},
        # Calls on the leased trial come with its lease secret, as a worker's do.
        extra_headers={"X-Lease-Secret": lease.json()["lease_secret"]},
    )
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:15])
    assert statuses[200] and statuses[404] and statuses[422], statuses


def test_revoke_answers_as_documented(live_api: LiveApi) -> None:
    root = live_api.as_("root")
    # A user of its own: a user can revoke only their tokens, so the generated ids cannot
    # end the other tests' tokens (another owner's id is a 404).
    caller = root.post("/api/v1/tokens", json={"scope": "user", "owner": "zoe"}).json()
    spare = root.post("/api/v1/tokens", json={"scope": "user", "owner": "zoe"}).json()
    failures, statuses = check_operations(
        live_api,
        token=caller["token"],
        select=lambda method, path: path.endswith("/revoke"),
        path_parameters={"token_id": spare["id"]},
    )
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:15])
    assert statuses[200] and statuses[404], statuses


def test_a_deleted_study_is_gone_from_every_route(live_api: LiveApi) -> None:
    alice = live_api.as_("alice")
    # A name the generated requests above cannot have taken (they make studies too).
    study = create_study(alice, name=f"deleted-{uuid.uuid4().hex[:12]}")
    assert alice.delete(f"/api/v1/studies/{study['id']}").status_code == 204
    base = f"/api/v1/studies/{study['id']}"
    for method, path in [
        ("GET", base),
        ("GET", f"/api/v1/studies/by-name/{study['name']}"),
        ("GET", f"{base}/trials"),
        ("GET", f"{base}/trials/0"),
        ("POST", f"{base}/pause"),
        ("POST", f"{base}/trials"),
        ("DELETE", base),
    ]:
        body: Any = (
            {"params": {"lr": 0.01}} if path.endswith("/trials") and method == "POST" else None
        )
        answer = alice.request(method, path, json=body)
        assert answer.status_code == 404, (method, path, answer.text)
        assert error_of(answer)["code"] == "not_found"
    listed = alice.get("/api/v1/studies").json()["data"]
    assert study["id"] not in [s["id"] for s in listed]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/studies", b'{"name": x}'),
        ("/api/v1/studies/1/trials", b'{\n "params": {'),
    ],
)
def test_a_body_that_is_not_json_is_400_saying_where(live_api: LiveApi, path: str, body: bytes):
    answer = live_api.as_("alice").post(
        path, content=body, headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 400, answer.text
    detail = error_of(answer)
    assert detail["code"] == "invalid_json"
    assert detail["message"].startswith("the body is not valid JSON at line")
