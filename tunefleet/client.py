"""The user API over HTTP, for the CLI, the demo and scripts: studies and their trials."""

from __future__ import annotations

from typing import Any

import httpx

from tunefleet.http import AmbiguousFailure, ApiConnection, ApiError, Backoff, Unreachable

__all__ = ["AmbiguousFailure", "ApiError", "TuneFleetClient", "Unreachable"]


class TuneFleetClient:
    """The user API: studies and their trials. Names or ids address a study.

    Reads, deletes and state changes are retried a few times on connection
    errors and 5xx; a study create or an enqueue is never sent twice blindly
    (see :meth:`create_study`).
    """

    def __init__(
        self,
        service: str,
        token: str,
        *,
        timeout_s: float = 30.0,
        attempts: int = 4,
        backoff: Backoff | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.service = service.rstrip("/")
        self._api = ApiConnection(
            self.service,
            token,
            timeout_s=timeout_s,
            attempts=attempts,
            backoff=backoff,
            transport=transport,
        )

    def close(self) -> None:
        self._api.close()

    def __enter__(self) -> TuneFleetClient:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def request(self, method: str, path: str, *, idempotent: bool = True, **kwargs: Any) -> Any:
        """One call under the API prefix; the answer's JSON, or None for an empty answer."""
        answer = self._api.request(method, path, idempotent=idempotent, **kwargs)
        if answer.status_code == 204 or not answer.content:
            return None
        return answer.json()

    # Studies.

    def study_id(self, ref: str | int) -> int:
        """The id of a study given by id or by name."""
        if isinstance(ref, int) or str(ref).isdigit():
            return int(ref)
        return int(self.study_by_name(str(ref))["id"])

    def study_by_name(self, name: str) -> dict:
        return self.request("GET", f"/studies/by-name/{name}")

    def create_study(self, spec: dict) -> dict:
        """Create a study; sent again after an ambiguous failure only if it does not exist.

        A create whose answer was lost (a timeout, a reset connection, a 5xx)
        may have gone through: the study is looked up by name first, and one
        found with the same spec is the one this call created.
        """
        attempts = self._api.attempts or 1
        for attempt in range(attempts):
            try:
                return self.request("POST", "/studies", json_body=spec, idempotent=False)
            except AmbiguousFailure as failure:
                name = spec.get("name")
                if not name:
                    raise
                found = self._created_by_name(name, spec)
                if found is not None:
                    return found
                if attempt == attempts - 1:
                    raise failure from None
        raise AssertionError("unreachable")

    def _created_by_name(self, name: str, spec: dict) -> dict | None:
        try:
            found = self.study_by_name(name)
        except ApiError as error:
            if error.status_code == 404:
                return None
            raise
        if not _same_spec(found.get("spec"), spec):
            raise ApiError(
                409,
                f"a study named {name!r} exists with another spec; "
                "choose another name or delete that study",
                code="conflict",
                path=["name"],
            )
        return found

    def list_studies(self, *, state: str | None = None, limit: int = 50, offset: int = 0) -> dict:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if state:
            params["state"] = state
        return self.request("GET", "/studies", params=params)

    def study(self, ref: str | int) -> dict:
        return self.request("GET", f"/studies/{self.study_id(ref)}")

    def control(self, ref: str | int, action: str) -> dict:
        """pause, resume or stop: setting a state, so safe to send again."""
        return self.request("POST", f"/studies/{self.study_id(ref)}/{action}")

    def delete_study(self, ref: str | int) -> None:
        self.request("DELETE", f"/studies/{self.study_id(ref)}")

    # Trials.

    def trials(
        self,
        ref: str | int,
        *,
        state: str | None = None,
        order_by: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> dict:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if state:
            params["state"] = state.lower()
        if order_by:
            params["order_by"] = order_by
        return self.request("GET", f"/studies/{self.study_id(ref)}/trials", params=params)

    def trial(self, ref: str | int, number: int) -> dict:
        return self.request("GET", f"/studies/{self.study_id(ref)}/trials/{number}")

    def enqueue(self, ref: str | int, params: dict) -> dict:
        """Queue a trial; never sent twice blindly, as a second send queues a second trial."""
        return self.request(
            "POST",
            f"/studies/{self.study_id(ref)}/trials",
            json_body={"params": params},
            idempotent=False,
        )


def _same_spec(found: Any, sent: dict) -> bool:
    """Whether the service's spec (defaults filled in) is the one sent."""
    from tunefleet.spec import StudySpec

    if not isinstance(found, dict):
        return False
    try:
        return StudySpec.model_validate(found) == StudySpec.model_validate(sent)
    except ValueError:
        return False
