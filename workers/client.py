"""The worker protocol over HTTP, with retries that never lose a result.

Every protocol call is idempotent on the service side (a lease asked again by
the same worker is the same lease, a repeated complete is answered with the
same outcome), so a call whose answer was lost is simply sent again: the
retry policy is :class:`tunefleet.http.ApiConnection`'s, with no attempt limit
unless a call sets one. A definitive 4xx is raised as :class:`Rejected`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from tunefleet.http import ApiConnection, Backoff
from tunefleet.http import ApiError as Rejected
from tunefleet.protocol import Assignment, HeartbeatAck, PruneDecision, TrialOutcome

__all__ = ["Rejected", "ServiceClient"]


class ServiceClient:
    """One worker's connection to the TuneFleet API.

    ``abort`` is set when the worker must stop now: waits between attempts end
    at once with :class:`tunefleet.http.Interrupted`.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout_s: float = 30.0,
        backoff: Backoff | None = None,
        abort: threading.Event | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._api = ApiConnection(
            base_url,
            token,
            timeout_s=timeout_s,
            attempts=None,
            backoff=backoff,
            abort=abort,
            transport=transport,
        )
        self.abort = self._api.abort
        self.backoff = self._api.backoff

    def close(self) -> None:
        self._api.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def lease(
        self,
        *,
        worker_id: str,
        device: str,
        abort: threading.Event | None = None,
        warm_backbones: Sequence[str] = (),
    ) -> Assignment | None:
        """A trial to run, or None when no study has work right now."""
        body: dict[str, Any] = {"worker_id": worker_id, "device": device}
        if warm_backbones:
            body["warm_backbones"] = list(warm_backbones)[:64]
        response = self._post("/leases", body, abort=abort)
        if response.status_code == 204:
            return None
        return Assignment.model_validate(response.json())

    def heartbeat(
        self, trial_id: int, *, progress: Mapping[str, Any] | None = None, attempts: int = 1
    ) -> HeartbeatAck:
        """Extend the lease; one attempt by default, the next beat is the retry."""
        body = {"progress": dict(progress)} if progress else {}
        response = self._post(f"/trials/{trial_id}/heartbeat", body, attempts=attempts)
        return HeartbeatAck.model_validate(response.json())

    def report_intermediate(self, trial_id: int, *, step: int, value: float) -> bool:
        """Record a validation value; True when the pruner stopped the trial."""
        response = self._post(
            f"/trials/{trial_id}/intermediate", {"step": step, "value": float(value)}
        )
        return PruneDecision.model_validate(response.json()).prune

    def complete(
        self,
        trial_id: int,
        *,
        values: Mapping[str, float],
        attrs: Mapping[str, Any] | None = None,
        artifact: str | None = None,
    ) -> TrialOutcome:
        """Hand in the final values; retried until accepted or rejected."""
        body: dict[str, Any] = {"values": dict(values), "attrs": dict(attrs or {})}
        if artifact is not None:
            body["artifact"] = artifact
        response = self._post(f"/trials/{trial_id}/complete", body)
        return TrialOutcome.model_validate(response.json())

    def fail(self, trial_id: int, *, reason: str, requeue: bool | None = None) -> TrialOutcome:
        body: dict[str, Any] = {"reason": reason[:2000] or "failed"}
        if requeue is not None:
            body["requeue"] = requeue
        response = self._post(f"/trials/{trial_id}/fail", body)
        return TrialOutcome.model_validate(response.json())

    def _post(
        self,
        path: str,
        body: Mapping[str, Any],
        *,
        attempts: int | None = None,
        abort: threading.Event | None = None,
    ) -> httpx.Response:
        # Idempotent on the service side: see the module's docstring.
        return self._api.request(
            "POST", path, json_body=body, idempotent=True, attempts=attempts, abort=abort
        )
