"""Secrets: worker tokens stay out of argv, weak token secrets are refused on
PostgreSQL, failed authentications are logged without the token, /metrics can
require a token. Real processes throughout."""

from __future__ import annotations

import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import REPO_ROOT, create_token, subprocess_env
from tunefleet.cli.fleet import LocalFleet

SECRET_EXAMPLE = REPO_ROOT / "deploy" / "k8s" / "secret.example.yaml"


def tunefleet(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunefleet", *args],
        env={**subprocess_env(), **env},
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )


def example_token_secret() -> str:
    document = yaml.safe_load(SECRET_EXAMPLE.read_text())
    return document["stringData"]["token-secret"]


@pytest.mark.parametrize(
    "secret",
    ["tunefleet-development-secret", "short-but-valid-8", "example"],
    ids=["default", "short", "example"],
)
@pytest.mark.parametrize(
    "command", [["serve"], ["token", "create", "--scope", "user", "--owner", "a"]]
)
def test_serve_and_token_create_refuse_a_weak_secret_on_postgresql(
    pg_url: str, secret: str, command: list[str]
) -> None:
    secret = example_token_secret() if secret == "example" else secret
    result = tunefleet(*command, TUNEFLEET_DATABASE_URL=pg_url, TUNEFLEET_TOKEN_SECRET=secret)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "TUNEFLEET_TOKEN_SECRET" in result.stderr
    assert "openssl rand -hex 32" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_example_secrets_are_not_valid_values() -> None:
    from service.config import weak_token_secret

    assert weak_token_secret(example_token_secret())
    for line in (REPO_ROOT / "deploy" / "env.example").read_text().splitlines():
        if line.startswith("TUNEFLEET_TOKEN_SECRET="):
            assert weak_token_secret(line.partition("=")[2])


class _Recorder(BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_POST(self):
        self.seen.append(self.headers.get("authorization", ""))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def recorder() -> tuple[str, list[str]]:
    seen: list[str] = []
    handler = type("Handler", (_Recorder,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", seen
    server.shutdown()


def test_a_worker_refuses_a_token_on_its_command_line(recorder) -> None:
    url, seen = recorder
    result = tunefleet("worker", "--service", url, "--token", "tf_secret_value", "--device", "cpu")
    assert result.returncode != 0
    assert "TUNEFLEET_TOKEN" in result.stderr and "--token-file" in result.stderr
    assert "tf_secret_value" not in result.stderr
    assert seen == []


def test_a_worker_reads_its_token_from_a_file(recorder, tmp_path: Path) -> None:
    url, seen = recorder
    token_file = tmp_path / "token"
    token_file.write_text("tf_from_the_file\n")
    result = tunefleet(
        "worker",
        "--service",
        url,
        "--token-file",
        str(token_file),
        "--device",
        "cpu",
        "--idle-exit",
        "0.5",
        TUNEFLEET_TOKEN="",
    )
    assert result.returncode == 0, result.stderr
    assert seen and set(seen) == {"Bearer tf_from_the_file"}


def test_the_local_fleet_keeps_worker_tokens_out_of_argv(tmp_path: Path) -> None:
    fleet = LocalFleet(database_url="sqlite://", data_dir=tmp_path)
    fleet.api_url = "http://127.0.0.1:9"
    proc = fleet.start_worker(0, "tf_do_not_show", "--device", "cpu")
    try:
        argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes()
    finally:
        proc.kill()
        proc.wait()
    assert b"tf_do_not_show" not in argv
    assert b"TUNEFLEET_TOKEN=tf_do_not_show" in environ


def test_failed_authentications_are_logged_rate_limited_without_the_token(
    migrated_pg_url: str, api_server_factory
) -> None:
    server = api_server_factory(migrated_pg_url)
    for i in range(40):
        httpx.get(
            f"{server.url}/api/v1/studies",
            headers={"Authorization": f"Bearer tf_guess_{i:04d}"},
        )
    log = server.log()
    lines = [ln for ln in log.splitlines() if "failed authentication" in ln]
    assert lines and "from 127.0.0.1: invalid token" in lines[0]
    assert len(lines) <= 20  # rate limited
    assert "tf_guess_" not in log


def test_metrics_can_require_a_token(migrated_pg_url: str, api_server_factory) -> None:
    server = api_server_factory(migrated_pg_url, metrics_token="m" * 40)
    user = create_token(migrated_pg_url, scope="user", owner="alice")
    assert httpx.get(f"{server.url}/metrics").status_code == 401
    wrong = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {user}"})
    assert wrong.status_code == 401
    right = httpx.get(f"{server.url}/metrics", headers={"Authorization": "Bearer " + "m" * 40})
    assert right.status_code == 200
    assert "tunefleet_http_requests" in right.text
