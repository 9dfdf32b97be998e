"""A built-in study on PostgreSQL with a real API process and two real worker processes;
then the CLI and optuna-dashboard read the same results."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import optuna
import pytest

from tests.conftest import REPO_ROOT, create_token, subprocess_env
from tests.e2e.helpers import start_worker, wait_until
from tunefleet.cli.demo import demo_spec
from tunefleet.client import TuneFleetClient

pytestmark = pytest.mark.slow

TRIALS = 4


def _cli(*args: str, service: str, token: str) -> subprocess.CompletedProcess:
    env = subprocess_env(service_url=service, token=token)
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "tunefleet", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory, module_pg_url):
    """Run one built-in study to the end with two workers; shared by the checks below."""
    from tests.conftest import start_api_server

    tmp_path = tmp_path_factory.mktemp("fleet")
    server = start_api_server(
        module_pg_url, tmp_path, heartbeat_interval_s=1, grace_period_s=30, reaper_interval_s=1
    )
    workers = []
    try:
        user = create_token(module_pg_url, scope="user", owner="alice")
        worker_token = create_token(module_pg_url, scope="worker", owner="fleet")
        workers = [start_worker(server.url, worker_token, tmp_path, i) for i in range(2)]
        spec = demo_spec(name="e2e-digits", trials=TRIALS, epochs=2, seed=3)
        with TuneFleetClient(server.url, user) as client:
            created = client.create_study(spec)
            study = wait_until(
                lambda: (s := client.study(created["id"]))["state"] == "completed" and s,
                timeout_s=300,
                interval_s=1,
                what="the study to complete",
            )
        yield {"server": server, "user": user, "study": study, "url": module_pg_url}
    finally:
        for proc in workers:
            proc.terminate()
        for proc in workers:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        server.stop()


def test_every_trial_completes_with_both_objectives(finished_study):
    study = optuna.load_study(
        study_name=_optuna_name(finished_study), storage=finished_study["url"]
    )
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE] * 2
    assert study.metric_names == ["accuracy", "robustness"]
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == TRIALS
    assert sorted(t.number for t in complete) == list(range(TRIALS))
    for trial in complete:
        assert all(0.0 <= v <= 1.0 for v in trial.values)
        assert any(key.startswith("robustness") for key in trial.user_attrs)
        assert trial.intermediate_values  # validation accuracy per epoch
    assert finished_study["study"]["best_trials"]


def _optuna_name(finished_study) -> str:
    names = [s.study_name for s in optuna.get_all_study_summaries(finished_study["url"])]
    assert len(names) == 1
    return names[0]


def test_cli_shows_the_study_and_sorted_trials(finished_study):
    service, token = finished_study["server"].url, finished_study["user"]
    shown = _cli("study", "show", "e2e-digits", "--json", service=service, token=token)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["name"] == "e2e-digits"

    listed = _cli(
        "trials", "e2e-digits", "--order-by", "accuracy", "--json", service=service, token=token
    )
    assert listed.returncode == 0, listed.stderr
    page = json.loads(listed.stdout)
    accuracies = [t["values"]["accuracy"] for t in page["data"]]
    assert len(accuracies) == TRIALS
    assert accuracies == sorted(accuracies, reverse=True)

    table = _cli("study", "list", service=service, token=token)
    assert table.returncode == 0 and "e2e-digits" in table.stdout

    missing = _cli("study", "show", "no-such-study", service=service, token=token)
    assert missing.returncode == 1
    assert "Traceback" not in missing.stderr and "error:" in missing.stderr


def test_optuna_dashboard_lists_the_study_and_its_trials(finished_study):
    from optuna_dashboard import wsgi

    storage = optuna.storages.RDBStorage(finished_study["url"])
    try:
        with httpx.Client(
            transport=httpx.WSGITransport(app=wsgi(storage)), base_url="http://dashboard"
        ) as dashboard:
            studies = dashboard.get("/api/studies").json()["study_summaries"]
            assert [s["study_name"] for s in studies] == [_optuna_name(finished_study)]
            detail = dashboard.get(f"/api/studies/{studies[0]['study_id']}").json()
            assert len(detail["trials"]) == TRIALS
            assert detail["objective_names"] == ["accuracy", "robustness"]
    finally:
        storage.engine.dispose()
