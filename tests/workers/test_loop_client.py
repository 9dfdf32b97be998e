"""The worker's HTTP client: what it retries, how long it waits, what it gives up on."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tunefleet.http import Backoff, Interrupted, Unreachable
from workers.client import Rejected, ServiceClient

COMPLETE = {"trial_id": 7, "number": 3, "state": "COMPLETE", "values": {"accuracy": 0.9}}


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


def client_for(transport, **kwargs) -> ServiceClient:
    return ServiceClient(
        "http://service", "tf_token", transport=transport, backoff=Backoff(0.01, 0.05), **kwargs
    )


def test_a_result_survives_connection_errors_and_503_until_accepted():
    transport, calls = scripted(
        httpx.ConnectError("refused"),
        httpx.Response(503, headers={"Retry-After": "0.2"}, json={"detail": {"message": "db"}}),
        httpx.Response(502, text="bad gateway"),
        httpx.Response(200, json=COMPLETE),
    )
    started = time.monotonic()
    outcome = client_for(transport).complete(7, values={"accuracy": 0.9}, attrs={"k": 1})
    assert outcome.state == "complete"
    assert len(calls) == 4
    # Retry-After is honoured (0.2 s) even though the backoff alone would be shorter.
    assert time.monotonic() - started >= 0.2
    assert calls[0].headers["Authorization"] == "Bearer tf_token"
    assert calls[0].url.path == "/api/v1/trials/7/complete"


def test_a_conflict_is_definitive_and_not_retried():
    transport, calls = scripted(
        httpx.Response(409, json={"detail": {"code": "conflict", "message": "lease expired"}})
    )
    with pytest.raises(Rejected) as info:
        client_for(transport).complete(7, values={"accuracy": 0.9})
    assert info.value.status_code == 409
    assert info.value.message == "lease expired"
    assert len(calls) == 1


def test_nan_values_are_sent_for_the_service_to_judge():
    transport, calls = scripted(httpx.Response(200, json={**COMPLETE, "state": "FAIL"}))
    client_for(transport).complete(7, values={"accuracy": float("nan")})
    assert b"NaN" in calls[0].content


def test_a_heartbeat_makes_one_attempt_by_default():
    transport, calls = scripted(httpx.ConnectError("refused"))
    with pytest.raises(Unreachable):
        client_for(transport).heartbeat(7, progress={"epoch": 1})
    assert len(calls) == 1


def test_no_work_is_none():
    transport, _ = scripted(httpx.Response(204))
    assert client_for(transport).lease(worker_id="w", device="cpu") is None


def test_stopping_cuts_a_backoff_wait_short():
    abort = threading.Event()
    transport, _ = scripted(*[httpx.ConnectError("refused")] * 100)
    client = ServiceClient("http://s", "t", transport=transport, backoff=Backoff(5, 5), abort=abort)
    threading.Timer(0.2, abort.set).start()
    started = time.monotonic()
    with pytest.raises(Interrupted):
        client.lease(worker_id="w", device="cpu")
    assert time.monotonic() - started < 2
