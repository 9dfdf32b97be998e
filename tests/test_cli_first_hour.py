"""What a new user meets in the first hour, through the real CLI against a real API."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from tests.conftest import REPO_ROOT, create_token, free_port, subprocess_env
from tests.test_fleet_support import study_spec


def cli(*args: str, env: dict | None = None, **settings: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunefleet", *args],
        env={**subprocess_env(**settings), "COLUMNS": "80", **(env or {})},
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )


@pytest.fixture
def user(api_server):
    token = create_token(api_server.database_url, scope="user", owner="alice")
    worker = create_token(api_server.database_url, scope="worker", owner="fleet")
    env = {"TUNEFLEET_SERVICE_URL": api_server.url, "TUNEFLEET_TOKEN": token}
    api = httpx.Client(
        base_url=f"{api_server.url}/api/v1", headers={"Authorization": f"Bearer {token}"}
    )
    workers = httpx.Client(
        base_url=f"{api_server.url}/api/v1", headers={"Authorization": f"Bearer {worker}"}
    )
    with api, workers:
        yield env, api, workers


def _create(api: httpx.Client, name: str, **overrides) -> dict:
    answer = api.post("/studies", json=study_spec(name, **overrides))
    assert answer.status_code == 201, answer.text
    return answer.json()


def test_show_list_and_watch_of_a_failed_study_say_why(user):
    env, api, workers = user
    _create(api, "doomed", budget={"max_trials": 5, "epochs": 2, "max_failed_trials": 1})
    trial = workers.post("/leases", json={"worker_id": "w1", "device": "cpu"}).json()
    reason = "FileNotFoundError: [Errno 2] No such file: '/models/resnet18.pth'"
    failed = workers.post(
        f"/trials/{trial['trial_id']}/fail",
        json={"reason": reason, "requeue": False},
        headers={"X-Lease-Secret": trial["lease_secret"]},
    )
    assert failed.status_code == 200, failed.text

    show = cli("study", "show", "doomed", env=env)
    assert show.returncode == 0, show.stderr
    why = [line for line in show.stdout.splitlines() if line.startswith("failed:")]
    assert len(why) == 1 and "resnet18.pth" in why[0], show.stdout
    assert "doomed failed: 0 done" in show.stdout

    listed = cli("study", "list", env=env)
    assert "failed" in listed.stdout

    watch = cli("study", "watch", "doomed", "--interval", "0.1", env=env)
    assert watch.returncode == 1
    assert "resnet18.pth" in watch.stdout


def test_show_says_how_many_past_trials_the_sampler_observes(user):
    env, api, workers = user
    _create(api, "seen-before", budget={"max_trials": 2, "epochs": 1})
    for value in (0.5, 0.7):
        trial = workers.post("/leases", json={"worker_id": "w-past", "device": "cpu"}).json()
        done = workers.post(
            f"/trials/{trial['trial_id']}/complete",
            json={"values": {"accuracy": value}},
            headers={"X-Lease-Secret": trial["lease_secret"]},
        )
        assert done.status_code == 200, done.text
    _create(
        api,
        "seeing",
        sampler={"type": "tpe"},
        warm_start={"studies": ["seen-before"], "top_k": 0, "observe": True},
    )
    show = cli("study", "show", "seeing", env=env)
    assert show.returncode == 0, show.stderr
    assert "warm start: the sampler observes 2 past trials of seen-before" in show.stdout
    plain = cli("study", "show", "seen-before", env=env)
    assert "warm start" not in plain.stdout


def test_a_study_named_with_digits_is_found_by_name_and_id_form_reaches_ids(user):
    env, api, _ = user
    first = _create(api, "first-one")
    named_one = _create(api, str(first["id"]))  # a study whose name is the other's id
    paused = cli("study", "pause", str(first["id"]), env=env)
    assert paused.returncode == 0, paused.stderr
    assert api.get(f"/studies/{named_one['id']}").json()["state"] == "paused"
    assert api.get(f"/studies/{first['id']}").json()["state"] == "running"
    by_id = cli("study", "pause", f"id:{first['id']}", env=env)
    assert by_id.returncode == 0, by_id.stderr
    assert api.get(f"/studies/{first['id']}").json()["state"] == "paused"


def test_trials_are_listed_best_first_by_default(user):
    env, api, workers = user
    _create(api, "ranked")
    for value in (0.2, 0.9, 0.5):
        trial = workers.post("/leases", json={"worker_id": f"w{value}", "device": "cpu"}).json()
        done = workers.post(
            f"/trials/{trial['trial_id']}/complete",
            json={"values": {"accuracy": value}},
            headers={"X-Lease-Secret": trial["lease_secret"]},
        )
        assert done.status_code == 200, done.text
    listed = cli("trials", "ranked", "--json", env=env)
    values = [t["values"]["accuracy"] for t in json.loads(listed.stdout)["data"]]
    assert values == [0.9, 0.5, 0.2]


def test_long_names_fold_at_80_columns_instead_of_being_cut(user):
    env, api, _ = user
    name = "digits-transfer-with-a-rather-long-name-0123456789"
    _create(api, name)
    listed = cli("study", "list", env=env)
    assert "…" not in listed.stdout
    assert all(len(line) <= 80 for line in listed.stdout.splitlines())
    rows = [line.split("│") for line in listed.stdout.splitlines() if line.startswith("│")]
    assert "".join(row[2].strip() for row in rows) == name  # folded over lines, whole


def test_an_api_error_names_its_path_once(user):
    env, api, _ = user
    _create(api, "paths")
    result = cli("study", "enqueue", "paths", "-p", "lr=5", env=env)
    assert result.returncode == 1
    assert result.stderr.count("params.lr") == 1, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_unreadable_yaml_spec_is_one_line_with_line_and_column(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: [a\nb: {\n")
    result = cli("study", "create", "-f", str(spec), "--token", "x")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "at line 2 column 2" in result.stderr


def test_a_bad_json_body_says_line_and_column(api_server):
    token = create_token(api_server.database_url, scope="user", owner="alice")
    answer = httpx.post(
        f"{api_server.url}/api/v1/studies",
        content=b'{"name": }',
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert answer.status_code == 400
    assert "line 1 column 10" in answer.json()["detail"]["message"]


def test_serve_names_the_option_the_url_came_from(pg_url, tmp_path):
    result = cli("serve", "--port", str(free_port()), "--database-url", pg_url, data_dir=tmp_path)
    assert result.returncode == 1
    assert "--database-url" in result.stderr
    assert "TUNEFLEET_DATABASE_URL" not in result.stderr


@pytest.mark.parametrize("device", ["gpu", "cuda:0", "cuda:99"])
def test_a_worker_with_a_bad_device_exits_2_in_one_line(device):
    env = {"TUNEFLEET_TOKEN": "x", **({"CUDA_VISIBLE_DEVICES": ""} if device == "cuda:0" else {})}
    result = cli("worker", "--device", device, env=env)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "TUNEFLEET_DEVICE" in result.stderr and repr(device) in result.stderr


def test_python_m_workers_help_shows_a_usage_that_works():
    result = subprocess.run(
        [sys.executable, "-m", "workers", "--help"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert result.returncode == 0
    assert "Usage: python -m workers [OPTIONS]" in result.stdout
