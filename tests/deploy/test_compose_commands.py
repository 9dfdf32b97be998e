"""The commands docker-compose.yml runs, run here against a real PostgreSQL in its order.

No Docker engine is needed: each service's command is taken from the compose
file and run as a process, with what Docker would change (the port, the host
the worker sees, the device) swapped for what this machine has.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import free_port, subprocess_env, wait_for_http

from .conftest import REPO_ROOT

BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def _env(**settings: object) -> dict[str, str]:
    env = subprocess_env(**settings)
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    return env


def _interpolate(word: str, values: dict[str, str]) -> str:
    """Compose's interpolation of ${VAR...} and its $$ escape, for the variables given."""
    word = re.sub(r"\$\{(\w+)[^}]*\}", lambda m: values[m.group(1)], word)
    return word.replace("$$", "$")


def test_compose_commands_migrate_serve_and_lease_with_the_shared_token(compose, pg_url, tmp_path):
    services = compose["services"]
    worker_token = secrets.token_hex(32)  # what `openssl rand -hex 32` gives
    database_url = (
        make_url(pg_url).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    )
    env = _env(
        database_url=database_url,
        token_secret=secrets.token_hex(32),
        worker_token=worker_token,
        artifact_dir=tmp_path / "artifacts",
    )

    # migrate: runs on every `up`, so twice in a row must succeed, and the token
    # it registers must not appear in its output (the logs).
    migrate = services["migrate"]
    argv = [_interpolate(w, {}) for w in migrate["entrypoint"] + migrate["command"]]
    for _ in range(2):
        done = subprocess.run(
            argv, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert worker_token not in done.stdout + done.stderr

    # api: its command, on a free loopback port instead of the container's 8000.
    port = str(free_port())
    api_argv = ["tunefleet"] + [
        {"8000": port, "0.0.0.0": "127.0.0.1"}.get(w, w) for w in services["api"]["command"]
    ]
    log = (tmp_path / "api.log").open("w")
    api = subprocess.Popen(api_argv, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", proc=api)

        # The compose healthcheck, as Docker would run it.
        check = [w.replace(":8000/", f":{port}/") for w in services["api"]["healthcheck"]["test"]]
        assert check[0] == "CMD"
        assert subprocess.run(check[1:], env=env, timeout=30).returncode == 0

        # worker: its command, and its environment's token from .env; the API's service
        # name and the GPU become this machine's loopback and CPU.
        worker_argv = ["tunefleet"] + [
            {"http://api:8000": f"http://127.0.0.1:{port}", "cuda:0": "cpu"}.get(w, w)
            for w in services["worker"]["command"]
        ]
        assert worker_token not in " ".join(worker_argv)
        token_env = _interpolate(
            services["worker"]["environment"]["TUNEFLEET_TOKEN"],
            {"TUNEFLEET_WORKER_TOKEN": worker_token},
        )
        assert token_env == worker_token
        worker_env = {
            **_env(cache_dir=tmp_path / "cache", artifact_dir=tmp_path / "artifacts"),
            "TUNEFLEET_TOKEN": token_env,
        }
        worker = subprocess.run(
            [*worker_argv, "--idle-exit", "2"],
            env=worker_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert worker.returncode == 0, worker.stdout + worker.stderr

        # The same worker with a token that migrate did not register is refused.
        refused = subprocess.run(
            [*worker_argv, "--idle-exit", "2"],
            env={**worker_env, "TUNEFLEET_TOKEN": secrets.token_hex(32)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert refused.returncode != 0
    finally:
        api.terminate()
        api.wait(timeout=30)
        log.close()
