"""Prometheus metrics at /metrics: HTTP traffic, and studies and trials by state.

Request counts and latencies are labelled by route template (`/api/v1/studies/{study_id}`),
never by raw path, so their number stays bounded. Study and trial gauges are
read from the database when Prometheus scrapes, at most once every few
seconds (two GROUP BY queries); a scrape while the database is down still
answers, with `tunefleet_database_up 0`.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable, Iterable

import sqlalchemy as sa
from fastapi import APIRouter, FastAPI, Request, Response
from optuna.storages import BaseStorage
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from sqlalchemy.engine import Engine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import Unauthorized
from service.models import STUDY_STATES, StudyRecord
from service.optuna_store import trial_state_totals
from service.schemas import error_responses

__all__ = ["SCRAPE_CACHE_S", "StateCollector", "install_metrics"]

log = logging.getLogger(__name__)

SCRAPE_CACHE_S = 5.0
UNMATCHED = "<unmatched>"


class StateCollector:
    """Studies per state (our table) and trials per state (Optuna's), cached briefly."""

    def __init__(
        self,
        engine: Engine,
        storage: BaseStorage,
        *,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.engine = engine
        self.storage = storage
        self.clock = clock
        self._lock = threading.Lock()
        self._at = float("-inf")
        self._cached: tuple[dict[str, int], dict[str, int], bool] = ({}, {}, False)

    def _read(self) -> tuple[dict[str, int], dict[str, int], bool]:
        studies = dict.fromkeys(STUDY_STATES, 0)
        try:
            with self.engine.connect() as conn:
                query = sa.select(StudyRecord.state, sa.func.count()).group_by(StudyRecord.state)
                for state, n in conn.execute(query):
                    studies[state] = n
            trials = trial_state_totals(self.storage)
        except Exception as error:  # a scrape must not fail because the database did
            log.warning("metrics: database unreachable: %s", error)
            return {}, {}, False
        return studies, trials, True

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            if self.clock() - self._at >= SCRAPE_CACHE_S:
                self._cached = self._read()
                self._at = self.clock()
            studies, trials, up = self._cached
        study_gauge = GaugeMetricFamily("tunefleet_studies", "Studies by state.", labels=["state"])
        for state, n in studies.items():
            study_gauge.add_metric([state], n)
        trial_gauge = GaugeMetricFamily(
            "tunefleet_trials", "Optuna trials of every study, by state.", labels=["state"]
        )
        for state, n in trials.items():
            trial_gauge.add_metric([state], n)
        up_gauge = GaugeMetricFamily(
            "tunefleet_database_up", "1 when the last read of the database succeeded."
        )
        up_gauge.add_metric([], 1 if up else 0)
        return [study_gauge, trial_gauge, up_gauge]


class RequestMetrics:
    """ASGI middleware counting requests and timing them by method, route and status."""

    def __init__(self, app: ASGIApp, *, requests: Counter, latency: Histogram) -> None:
        self.app = app
        self.requests = requests
        self.latency = latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED
            method = scope.get("method", "")
            self.requests.labels(method, template, str(status)).inc()
            self.latency.labels(method, template).observe(time.perf_counter() - start)


def install_metrics(app: FastAPI) -> None:
    """Add /metrics and the request middleware; each app has its own registry."""
    disable_created_metrics()  # no *_created series: they only add noise here
    registry = CollectorRegistry()
    requests = Counter(
        "tunefleet_http_requests",
        "HTTP requests by method, route template and status.",
        ["method", "route", "status"],
        registry=registry,
    )
    latency = Histogram(
        "tunefleet_http_request_duration_seconds",
        "HTTP request latency by method and route template.",
        ["method", "route"],
        registry=registry,
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    )
    # Kept on the app so that a test can give it a clock of its own.
    app.state.metrics_collector = StateCollector(app.state.engine, app.state.storage)
    registry.register(app.state.metrics_collector)
    app.state.metrics_registry = registry
    app.add_middleware(RequestMetrics, requests=requests, latency=latency)
    app.include_router(router)


router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Text format 0.0.4"},
        **error_responses(401),
    },
)
def metrics(request: Request) -> Response:
    """Request counts and latencies, studies and trials by state, in Prometheus text format.

    With TUNEFLEET_METRICS_TOKEN set, only `Authorization: Bearer <that token>`."""
    expected = request.app.state.settings.metrics_token
    if expected:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {expected}".encode()):
            raise Unauthorized("/metrics needs 'Authorization: Bearer <TUNEFLEET_METRICS_TOKEN>'")
    body = generate_latest(request.app.state.metrics_registry)
    return Response(content=body, media_type=CONTENT_TYPE_LATEST)
