"""HTTP client of the user API, for the CLI, the demo and scripts."""

from __future__ import annotations

import time
from typing import Any

import httpx

API = "/api/v1"


class ApiError(Exception):
    """An answer other than success, with the service's message (and the field path, if any)."""

    def __init__(self, status: int, message: str, *, path: list | None = None) -> None:
        self.status = status
        self.message = message
        self.path = path
        where = f" (at {'.'.join(str(p) for p in path)})" if path else ""
        super().__init__(f"{message}{where}")


class ServiceUnreachable(ApiError):
    def __init__(self, url: str, reason: str) -> None:
        super().__init__(
            0,
            f"cannot reach the TuneFleet API at {url}: {reason}; check --service "
            "(TUNEFLEET_SERVICE_URL) and that `tunefleet serve` is running",
        )


def _message(answer: httpx.Response) -> tuple[str, list | None]:
    try:
        body = answer.json()
    except ValueError:
        return answer.text.strip()[:300] or answer.reason_phrase, None
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, dict):
        return str(detail.get("message", detail)), detail.get("path")
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        # FastAPI's validation errors: a list of {loc, msg}.
        first = detail[0]
        loc = [p for p in first.get("loc", []) if p != "body"]
        more = f" (and {len(detail) - 1} more)" if len(detail) > 1 else ""
        return f"{first.get('msg', 'invalid')}{more}", loc or None
    return str(detail), None


class TuneFleetClient:
    """The user API: studies and their trials. Names or ids address a study."""

    def __init__(
        self,
        service: str,
        token: str,
        *,
        timeout_s: float = 30.0,
        retries: int = 3,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.service = service.rstrip("/")
        self.retries = retries
        self._http = httpx.Client(
            base_url=self.service,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_s,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> TuneFleetClient:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One call; 503 and connection errors are retried a few times with backoff."""
        delay = 0.5
        for attempt in range(self.retries + 1):
            try:
                answer = self._http.request(method, path, **kwargs)
            except httpx.TransportError as error:
                if attempt == self.retries:
                    raise ServiceUnreachable(
                        self.service, str(error) or type(error).__name__
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if answer.status_code == 503 and attempt < self.retries:
                time.sleep(float(answer.headers.get("Retry-After", delay)))
                continue
            if answer.status_code >= 400:
                message, path_ = _message(answer)
                raise ApiError(answer.status_code, message, path=path_)
            if answer.status_code == 204 or not answer.content:
                return None
            return answer.json()
        raise AssertionError("unreachable")

    # Studies.

    def study_id(self, ref: str | int) -> int:
        """The id of a study given by id or by name."""
        if isinstance(ref, int) or str(ref).isdigit():
            return int(ref)
        return int(self.request("GET", f"{API}/studies/by-name/{ref}")["id"])

    def create_study(self, spec: dict) -> dict:
        return self.request("POST", f"{API}/studies", json=spec)

    def list_studies(self, *, state: str | None = None, limit: int = 50, offset: int = 0) -> dict:
        params = {"limit": limit, "offset": offset}
        if state:
            params["state"] = state
        return self.request("GET", f"{API}/studies", params=params)

    def study(self, ref: str | int) -> dict:
        return self.request("GET", f"{API}/studies/{self.study_id(ref)}")

    def control(self, ref: str | int, action: str) -> dict:
        """pause, resume or stop."""
        return self.request("POST", f"{API}/studies/{self.study_id(ref)}/{action}")

    def delete_study(self, ref: str | int) -> None:
        self.request("DELETE", f"{API}/studies/{self.study_id(ref)}")

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
        return self.request("GET", f"{API}/studies/{self.study_id(ref)}/trials", params=params)

    def trial(self, ref: str | int, number: int) -> dict:
        return self.request("GET", f"{API}/studies/{self.study_id(ref)}/trials/{number}")

    def enqueue(self, ref: str | int, params: dict) -> dict:
        return self.request(
            "POST", f"{API}/studies/{self.study_id(ref)}/trials", json={"params": params}
        )
