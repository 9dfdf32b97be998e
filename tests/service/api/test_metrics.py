"""/metrics in Prometheus text format, scraped from the API."""

from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.metrics import SCRAPE_CACHE_S, StateCollector
from tests.service.api.conftest import LiveApi, create_study, run_trials


class ManualClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def scrape(api: LiveApi) -> dict[tuple[str, tuple], float]:
    text = api.as_("alice").get("/metrics").text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def gauges(collector: StateCollector) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in collector.collect()
        for sample in family.samples
    }


def test_metrics_count_requests_by_route_template_and_status(live_api: LiveApi) -> None:
    alice = live_api.as_("alice")
    study = create_study(alice)
    for _ in range(3):
        alice.get(f"/api/v1/studies/{study['id']}")
    alice.get("/api/v1/studies/999999")
    alice.get("/no/such/path")
    samples = scrape(live_api)

    def requests(route: str, status: str, method: str = "GET") -> float:
        labels = (("method", method), ("route", route), ("status", status))
        return samples.get(("tunefleet_http_requests_total", labels), 0.0)

    assert requests("/api/v1/studies/{study_id}", "200") >= 3
    assert requests("/api/v1/studies/{study_id}", "404") >= 1
    assert requests("/api/v1/studies", "201", method="POST") >= 1
    assert requests("<unmatched>", "404") >= 1
    # Raw ids never become labels.
    assert not any(f"/{study['id']}" in str(labels) for _, labels in samples)
    count_key = (
        "tunefleet_http_request_duration_seconds_count",
        (("method", "GET"), ("route", "/api/v1/studies/{study_id}")),
    )
    assert samples[count_key] >= 4


def test_metrics_report_studies_and_trials_by_state(
    live_api: LiveApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ManualClock(time.monotonic())
    monkeypatch.setattr(live_api.app.state.metrics_collector, "clock", clock)
    alice = live_api.as_("alice")
    study = create_study(alice)
    alice.post(f"/api/v1/studies/{study['id']}/pause")
    run_trials(live_api, study, [[0.5], [0.6]])
    clock.advance(SCRAPE_CACHE_S)  # past the collector's cache
    samples = scrape(live_api)
    assert samples[("tunefleet_studies", (("state", "paused"),))] >= 1
    assert samples[("tunefleet_trials", (("state", "complete"),))] >= 2
    assert ("tunefleet_trials", (("state", "pruned"),)) in samples
    assert samples[("tunefleet_database_up", ())] == 1


def test_state_gauges_are_read_at_most_once_per_cache_period(live_api: LiveApi) -> None:
    app = live_api.app
    clock = ManualClock(0.0)
    collector = StateCollector(app.state.engine, app.state.storage, clock=clock)
    paused = ("tunefleet_studies", (("state", "paused"),))
    before = gauges(collector)[paused]
    study = create_study(live_api.as_("alice"))
    live_api.as_("alice").post(f"/api/v1/studies/{study['id']}/pause")

    clock.advance(SCRAPE_CACHE_S - 0.01)
    assert gauges(collector)[paused] == before  # still the cached read
    clock.advance(0.01)
    assert gauges(collector)[paused] == before + 1
