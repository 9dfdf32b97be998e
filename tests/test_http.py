"""The HTTP core and the user API's client: what is retried, how long it waits, what is
never sent twice."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from tunefleet.client import TuneFleetClient
from tunefleet.http import (
    AmbiguousFailure,
    ApiConnection,
    ApiError,
    Backoff,
    Unreachable,
    retry_after_seconds,
)

SPEC = {
    "name": "cifar-resnet",
    "source_model": "builtin:digits-cnn",
    "dataset": "builtin:digits-5to9",
    "objectives": [{"metric": "accuracy", "direction": "maximize"}],
    "search_space": {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}},
}
STUDY = {"id": 12, "name": "cifar-resnet", "state": "running", "spec": SPEC}


def scripted(*answers):
    """A transport that answers the requests in order and records them."""
    calls: list[httpx.Request] = []
    queue = list(answers)

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.MockTransport(handle), calls


def user_client(transport) -> TuneFleetClient:
    return TuneFleetClient(
        "http://service/", "tf_user", transport=transport, backoff=Backoff(0.01, 0.05)
    )


# ----------------------------------------------------------------------------- Retry-After


def test_retry_after_takes_seconds_or_an_http_date():
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert retry_after_seconds("5") == 5
    assert retry_after_seconds("0.25") == 0.25
    assert (
        retry_after_seconds(format_datetime(now + timedelta(seconds=7), usegmt=True), now=now) == 7
    )
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0  # in the past
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_a_read_waits_as_long_as_retry_after_says_in_either_form(form):
    wait_s = 1.0
    value = (
        str(wait_s)
        if form == "seconds"
        else format_datetime(datetime.now(UTC) + timedelta(seconds=wait_s + 1), usegmt=True)
    )
    transport, calls = scripted(
        httpx.Response(503, headers={"Retry-After": value}, json={"detail": {"message": "db"}}),
        httpx.Response(200, json={"data": [], "count": 0}),
    )
    started = time.monotonic()
    assert user_client(transport).list_studies() == {"data": [], "count": 0}
    # The backoff alone would wait at most 0.01 s; an HTTP date has whole seconds.
    assert time.monotonic() - started >= 0.9
    assert len(calls) == 2


def test_reads_give_up_after_their_attempts_with_the_last_problem():
    transport, calls = scripted(*[httpx.Response(502, text="bad gateway")] * 4)
    with pytest.raises(Unreachable, match="502: bad gateway"):
        user_client(transport).list_studies()
    assert len(calls) == 4


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap():
    backoff = Backoff(base_s=0.5, max_s=8)
    for attempt, ceiling in [(0, 0.5), (1, 1), (2, 2), (3, 4), (4, 8), (10, 8), (100, 8)]:
        delays = [backoff.delay(attempt) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1


# ----------------------------------------------------------------------------- errors


def test_the_error_envelope_gives_status_code_message_and_field_path():
    body = {"detail": {"code": "invalid_spec", "message": "must be > 0", "path": ["budget", "x"]}}
    transport, calls = scripted(httpx.Response(422, json=body))
    with pytest.raises(ApiError) as info:
        user_client(transport).study(3)
    error = info.value
    assert (error.status_code, error.code, error.message) == (422, "invalid_spec", "must be > 0")
    assert error.path == ["budget", "x"]
    assert str(error) == "must be > 0 (at budget.x)"
    assert len(calls) == 1  # a 4xx is definitive


def test_fastapis_own_validation_errors_read_the_same_way():
    body = {"detail": [{"loc": ["query", "limit"], "msg": "too big"}, {"loc": [], "msg": "x"}]}
    transport, _ = scripted(httpx.Response(422, json=body))
    with pytest.raises(ApiError) as info:
        user_client(transport).list_studies(limit=10**6)
    assert info.value.message == "too big (and 1 more)"
    assert info.value.path == ["query", "limit"]


def test_the_prefix_and_the_token_are_added_once():
    transport, calls = scripted(httpx.Response(200, json=STUDY), httpx.Response(200, json=STUDY))
    user_client(transport).study("cifar-resnet")
    assert [c.url.path for c in calls] == [
        "/api/v1/studies/by-name/cifar-resnet",
        "/api/v1/studies/12",
    ]
    assert all(c.headers["Authorization"] == "Bearer tf_user" for c in calls)


# ----------------------------------------------------------------------------- not idempotent


def test_a_study_create_that_timed_out_is_looked_up_by_name_not_sent_again():
    transport, calls = scripted(httpx.ReadTimeout("no answer"), httpx.Response(200, json=STUDY))
    assert user_client(transport).create_study(SPEC)["id"] == 12
    assert [(c.method, c.url.path) for c in calls] == [
        ("POST", "/api/v1/studies"),
        ("GET", "/api/v1/studies/by-name/cifar-resnet"),
    ]


def test_a_study_create_that_did_not_go_through_is_sent_again_after_the_check():
    not_found = {"detail": {"code": "not_found", "message": "no study"}}
    transport, calls = scripted(
        httpx.RemoteProtocolError("connection reset"),
        httpx.Response(404, json=not_found),
        httpx.Response(201, json=STUDY),
    )
    assert user_client(transport).create_study(SPEC)["id"] == 12
    assert [c.method for c in calls] == ["POST", "GET", "POST"]


def test_a_study_found_with_another_spec_is_a_conflict_not_a_success():
    other = {
        **STUDY,
        "spec": {**SPEC, "search_space": {"lr": {"type": "float", "low": 1, "high": 2}}},
    }
    transport, calls = scripted(httpx.Response(500, text="oops"), httpx.Response(200, json=other))
    with pytest.raises(ApiError) as info:
        user_client(transport).create_study(SPEC)
    assert info.value.status_code == 409 and info.value.path == ["name"]
    assert [c.method for c in calls] == ["POST", "GET"]


def test_a_refused_connection_is_retried_even_for_a_create():
    # The request never left: sending it again cannot create a second study.
    transport, calls = scripted(httpx.ConnectError("refused"), httpx.Response(201, json=STUDY))
    assert user_client(transport).create_study(SPEC)["id"] == 12
    assert [c.method for c in calls] == ["POST", "POST"]


def test_an_enqueue_that_timed_out_is_never_sent_again():
    transport, calls = scripted(httpx.ReadTimeout("no answer"))
    with pytest.raises(AmbiguousFailure):
        user_client(transport).enqueue(12, {"lr": 0.01})
    assert len(calls) == 1


def test_idempotent_calls_are_retried_after_a_timeout():
    connection = ApiConnection(
        "http://service",
        "t",
        backoff=Backoff(0.01, 0.02),
        transport=scripted(httpx.ReadTimeout("slow"), httpx.Response(200, json={"ok": True}))[0],
    )
    assert connection.request("DELETE", "/studies/3", idempotent=True).json() == {"ok": True}


# ----------------------------------------------------------------------------- Failover


def test_a_refused_connection_or_a_503_moves_to_the_next_api_process_at_once():
    transport, calls = scripted(
        httpx.ConnectError("refused"),
        httpx.Response(503, headers={"Retry-After": "30"}, json={"detail": {"message": "db"}}),
        httpx.Response(200, json={"ok": True}),
    )
    connection = ApiConnection(
        "http://api-1:8000, http://api-2:8000/,http://api-3:8000",
        "t",
        backoff=Backoff(5, 10),  # a wait would show in the time taken
        transport=transport,
    )
    started = time.monotonic()
    assert connection.request("GET", "/studies", idempotent=True).json() == {"ok": True}
    assert time.monotonic() - started < 1.0
    assert [c.url.host for c in calls] == ["api-1", "api-2", "api-3"]
    assert connection.base_url == "http://api-3:8000"  # kept for the calls after


def test_failover_waits_once_every_process_was_tried():
    transport, calls = scripted(
        httpx.ConnectError("refused"),
        httpx.ConnectError("refused"),
        httpx.Response(200, json={"ok": True}),
    )
    connection = ApiConnection(
        "http://api-1,http://api-2", "t", backoff=Backoff(0.2, 0.2), transport=transport
    )
    started = time.monotonic()
    connection.request("GET", "/studies", idempotent=True)
    assert time.monotonic() - started >= 0.1  # the backoff's fixed half
    assert [c.url.host for c in calls] == ["api-1", "api-2", "api-1"]


def test_a_definitive_answer_does_not_fail_over():
    transport, calls = scripted(httpx.Response(404, json={"detail": {"message": "no such"}}))
    connection = ApiConnection("http://api-1,http://api-2", "t", transport=transport)
    with pytest.raises(ApiError):
        connection.request("GET", "/studies/9", idempotent=True)
    assert [c.url.host for c in calls] == ["api-1"]


def test_an_ambiguous_create_is_not_sent_to_another_process():
    transport, calls = scripted(httpx.ReadTimeout("no answer"))
    connection = ApiConnection("http://api-1,http://api-2", "t", transport=transport)
    with pytest.raises(AmbiguousFailure):
        connection.request("POST", "/studies", json_body={}, idempotent=False)
    assert len(calls) == 1
