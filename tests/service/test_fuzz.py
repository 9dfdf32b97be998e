"""Schema-driven fuzzing of the API: whatever a client sends, never a 5xx.

Schemathesis reads /openapi.json and generates requests for every operation,
valid ones and invalid ones, some aimed at an existing study so that the
handlers behind the 404 are reached too. The app is service.main.create_app's,
on a real PostgreSQL database, called in this process through Schemathesis's
ASGI transport (which runs its lifespan for each test). Bounded by
TUNEFLEET_FUZZ_EXAMPLES (examples per operation and mode; 10 by default, a
smoke run of well under a minute; raise it for a deeper search).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.service.api.conftest import LiveApi, create_study, in_process_app, make_tokens

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("TUNEFLEET_FUZZ_EXAMPLES", "10"))
WORKER_PATHS = ("/api/v1/leases", "/api/v1/trials/")


@pytest.fixture(scope="module")
def live_api(module_pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    """The app with its tokens; Schemathesis starts and stops its lifespan around each test."""
    app = in_process_app(module_pg_url, tmp_path_factory.mktemp("api"))
    api = LiveApi(app=app, database_url=module_pg_url, tokens=make_tokens(app))
    yield api
    api.close()


def fuzz_operations(
    api: LiveApi,
    *,
    who: str,
    select,
    path_parameters: dict[str, Any],
    delete_parameters: dict[str, Any] | None = None,
) -> tuple[list[str], Counter]:
    """Fuzz the selected operations as `who`: every 5xx described, and the status counts.

    Operations with a parameter of `path_parameters` also get cases aimed at that
    value; DELETE ones at `delete_parameters` instead, so that the other
    operations still find their study once it has been deleted.
    """
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.app)
    token = api.tokens[who]
    failures: list[str] = []
    statuses: Counter = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    # Stop, then delete, last: a generated id may be the aimed-at study's, and the
    # other operations need it running.
    operations.sort(key=lambda op: (op.method.upper() == "DELETE", op.path.endswith("/stop")))
    for operation in operations:
        if not select(operation.path):
            continue
        aimed = path_parameters
        if operation.method.upper() == "DELETE" and delete_parameters is not None:
            aimed = delete_parameters
        fixed = {k: v for k, v in aimed.items() if f"{{{k}}}" in operation.path}
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
            # Our token replaces any generated one, whatever the case of its name.
            headers = {
                k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"
            }
            headers["Authorization"] = f"Bearer {token}"
            response = case.call(headers=headers)
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
    spare = create_study(live_api.as_("alice"))
    failures, statuses = fuzz_operations(
        live_api,
        who="alice",
        select=lambda path: not path.startswith(WORKER_PATHS),
        path_parameters={"study_id": study["id"], "number": 0, "name": study["name"]},
        delete_parameters={"study_id": spare["id"]},
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
