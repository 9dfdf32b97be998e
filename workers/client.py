"""The worker protocol over HTTP, with retries that never lose a result.

Every protocol call is idempotent on the service side (a lease asked again by
the same worker is the same lease, a repeated complete is answered with the
same outcome), so a call whose answer was lost is simply sent again: the
retry policy is :class:`tunefleet.http.ApiConnection`'s, with no attempt limit
unless a call sets one. A definitive 4xx is raised as :class:`Rejected`.

Every call on a leased trial carries the lease secret its assignment came
with (the ``X-Lease-Secret`` header); the client keeps it from the lease on.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from tunefleet.http import ApiConnection, Backoff
from tunefleet.http import ApiError as Rejected
from tunefleet.protocol import (
    LEASE_SECRET_HEADER,
    Assignment,
    BatchAssignment,
    HeartbeatAck,
    PruneDecision,
    TrialOutcome,
)

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
        # The lease secret of each trial leased through this client, by trial id.
        self._secrets: dict[int, str] = {}
        self._secrets_lock = threading.Lock()

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
        body = _lease_body(worker_id, device, warm_backbones)
        response = self._post("/leases", body, abort=abort)
        if response.status_code == 204:
            return None
        assignment = Assignment.model_validate(response.json())
        self.remember(assignment)
        return assignment

    def lease_batch(
        self,
        *,
        worker_id: str,
        device: str,
        count: int,
        abort: threading.Event | None = None,
        warm_backbones: Sequence[str] = (),
    ) -> list[Assignment]:
        """Up to `count` trials of one study, each with its own lease; [] when none."""
        body = {**_lease_body(worker_id, device, warm_backbones), "count": count}
        response = self._post("/leases/batch", body, abort=abort)
        if response.status_code == 204:
            return []
        assignments = BatchAssignment.model_validate(response.json()).assignments
        for assignment in assignments:
            self.remember(assignment)
        return assignments

    def remember(self, assignment: Assignment) -> None:
        """Keep the assignment's lease secret for the calls on its trial."""
        with self._secrets_lock:
            self._secrets[assignment.trial_id] = assignment.lease_secret

    def forget(self, trial_id: int) -> None:
        """Drop a finished trial's lease secret."""
        with self._secrets_lock:
            self._secrets.pop(trial_id, None)

    def heartbeat(
        self, trial_id: int, *, progress: Mapping[str, Any] | None = None, attempts: int = 1
    ) -> HeartbeatAck:
        """Extend the lease; one attempt by default, the next beat is the retry."""
        body = {"progress": dict(progress)} if progress else {}
        response = self._post(
            f"/trials/{trial_id}/heartbeat", body, attempts=attempts, trial_id=trial_id
        )
        return HeartbeatAck.model_validate(response.json())

    def report_intermediate(self, trial_id: int, *, step: int, value: float) -> bool:
        """Record a validation value; True when the pruner stopped the trial."""
        response = self._post(
            f"/trials/{trial_id}/intermediate",
            {"step": step, "value": float(value)},
            trial_id=trial_id,
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
        response = self._post(f"/trials/{trial_id}/complete", body, trial_id=trial_id)
        return TrialOutcome.model_validate(response.json())

    def fail(
        self,
        trial_id: int,
        *,
        reason: str,
        requeue: bool | None = None,
        detail: str | None = None,
    ) -> TrialOutcome:
        body: dict[str, Any] = {"reason": reason[:2000] or "failed"}
        if detail:
            body["detail"] = detail[:8000]
        if requeue is not None:
            body["requeue"] = requeue
        response = self._post(f"/trials/{trial_id}/fail", body, trial_id=trial_id)
        return TrialOutcome.model_validate(response.json())

    def _post(
        self,
        path: str,
        body: Mapping[str, Any],
        *,
        attempts: int | None = None,
        abort: threading.Event | None = None,
        trial_id: int | None = None,
    ) -> httpx.Response:
        headers = None
        if trial_id is not None:
            with self._secrets_lock:
                secret = self._secrets.get(trial_id)
            headers = {LEASE_SECRET_HEADER: secret} if secret else None
        # Idempotent on the service side: see the module's docstring.
        return self._api.request(
            "POST",
            path,
            json_body=body,
            headers=headers,
            idempotent=True,
            attempts=attempts,
            abort=abort,
        )


def _lease_body(worker_id: str, device: str, warm_backbones: Sequence[str]) -> dict[str, Any]:
    body: dict[str, Any] = {"worker_id": worker_id, "device": device}
    if warm_backbones:
        body["warm_backbones"] = list(warm_backbones)[:64]
    return body
