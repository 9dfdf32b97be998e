"""The worker's settings: several service URLs for failover."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from workers.config import WorkerSettings


def test_several_service_urls_comma_separated_are_kept_in_order(monkeypatch):
    monkeypatch.setenv("TUNEFLEET_SERVICE_URL", "http://api-1:8000/, http://api-2:8000")
    assert WorkerSettings().service_url == "http://api-1:8000,http://api-2:8000"


def test_each_service_url_must_be_http():
    with pytest.raises(ValidationError, match="must start with http"):
        WorkerSettings(service_url="http://api-1:8000,api-2:8000")
