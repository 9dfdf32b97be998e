"""Fixtures shared by every test: real PostgreSQL databases and real API processes.

Each test run creates its own databases on the PostgreSQL at
TUNEFLEET_TEST_PG_URL (default: the local server) and drops them afterwards.
Migrating takes about a second; it runs once per test run, into a template
database that every migrated database of the run is copied from. Likewise the
built-in source model (digits-cnn, tens of seconds of CPU) is pretrained once
per run and copied into the cache directory of each test that needs it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

REPO_ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get("TUNEFLEET_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
RUN_TAG = uuid.uuid4().hex[:8]
# `serve` and `token create` refuse a short or default secret on PostgreSQL; the tests'
# processes (and the tokens made in this one) share this long one.
TEST_TOKEN_SECRET = "tests-only-" + "0123456789abcdef" * 3
os.environ.setdefault("TUNEFLEET_TOKEN_SECRET", TEST_TOKEN_SECRET)


def _admin_engine() -> sa.Engine:
    return sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


def create_database(prefix: str = "tf_test", *, template: str | None = None) -> str:
    """A new PostgreSQL database for this run, empty or a copy of `template`; returns its URL."""
    name = f"{prefix}_{RUN_TAG}_{uuid.uuid4().hex[:8]}"
    copy_of = f' TEMPLATE "{make_url(template).database}"' if template else ""
    engine = _admin_engine()
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"{copy_of}'))
    engine.dispose()
    return make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)


_migrated_template: str | None = None


def create_migrated_database(prefix: str = "tf_test") -> str:
    """A new database with Optuna's and TuneFleet's schema at head, copied from a template
    that `tunefleet migrate` brought to head once per test run."""
    global _migrated_template
    if _migrated_template is None:
        from service.migrate import migrate

        template = create_database("tf_template")
        migrate(template)
        _migrated_template = template
    return create_database(prefix, template=_migrated_template)


def drop_database(url: str) -> None:
    name = make_url(url).database
    engine = _admin_engine()
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


_source_models: Path | None = None


def pretrained_source_models() -> Path:
    """A cache directory holding the built-in source model, pretrained on the first call
    of the run; tests give it to the engine as is, or copy it with copy_source_models."""
    global _source_models
    if _source_models is None:
        from workers.transfer import builtin

        cache = Path(tempfile.mkdtemp(prefix=f"tf_sources_{RUN_TAG}_"))
        builtin.load_or_pretrain(cache)
        _source_models = cache
    return _source_models


def copy_source_models(cache_dir: Path) -> Path:
    """Put the run's pretrained source models into `cache_dir` (a worker's or the demo's)."""
    shutil.copytree(
        pretrained_source_models() / "sources", cache_dir / "sources", dirs_exist_ok=True
    )
    return cache_dir


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database (not migrated)."""
    url = create_database()
    yield url
    drop_database(url)


@pytest.fixture
def migrated_pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database with Optuna's and TuneFleet's schema."""
    url = create_migrated_database()
    yield url
    drop_database(url)


@pytest.fixture(scope="module")
def module_pg_url() -> Iterator[str]:
    """One migrated database shared by the tests of a module (they must not interfere)."""
    url = create_migrated_database()
    yield url
    drop_database(url)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(**settings: object) -> dict[str, str]:
    """The environment of a child process: ours, the repo importable, TUNEFLEET_* overrides."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TUNEFLEET_TOKEN_SECRET", TEST_TOKEN_SECRET)
    for key, value in settings.items():
        env[f"TUNEFLEET_{key.upper()}"] = str(value)
    return env


def wait_for_http(url: str, *, timeout_s: float = 30.0, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            return httpx.get(url, timeout=2.0)
        except httpx.HTTPError as error:
            last = error
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout_s}s: {last}")


@dataclass
class ApiServer:
    """A real `tunefleet serve` process on a free port."""

    url: str
    database_url: str
    proc: subprocess.Popen
    log_path: Path
    settings: dict = field(default_factory=dict)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_api_server(database_url: str, tmp_dir: Path, **settings: object) -> ApiServer:
    port = free_port()
    settings = {"data_dir": tmp_dir, "database_url": database_url, **settings}
    log_path = tmp_dir / f"api-{port}.log"
    log_file = open(log_path, "w")  # noqa: SIM115 - the child process owns it
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunefleet", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=subprocess_env(**settings),
        stdout=log_file,
        stderr=subprocess.STDOUT,
        cwd=REPO_ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/healthz", proc=proc)
    except Exception:
        proc.kill()
        raise RuntimeError(f"API did not start:\n{log_path.read_text()}") from None
    return ApiServer(
        url=url, database_url=database_url, proc=proc, log_path=log_path, settings=settings
    )


@pytest.fixture
def api_server_factory(tmp_path: Path) -> Iterator[Callable[..., ApiServer]]:
    """Start real API processes: factory(database_url, **settings); stopped at teardown."""
    servers: list[ApiServer] = []

    def factory(database_url: str, **settings: object) -> ApiServer:
        server = start_api_server(database_url, tmp_path, **settings)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture
def api_server(migrated_pg_url: str, api_server_factory) -> ApiServer:
    """A real API process on a fresh migrated PostgreSQL database."""
    return api_server_factory(migrated_pg_url)


def create_token(database_url: str, *, scope: str, owner: str, studies_of: str = "") -> str:
    """A token made the way `tunefleet token create` makes it."""
    bound = ["--studies-of", studies_of] if studies_of else []
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunefleet",
            "token",
            "create",
            "--scope",
            scope,
            "--owner",
            owner,
            *bound,
        ],
        env=subprocess_env(database_url=database_url),
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=True,
    )
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session", autouse=True)
def _drop_leftover_databases() -> Iterator[None]:
    yield
    engine = _admin_engine()
    with engine.connect() as conn:
        names = (
            conn.execute(
                sa.text("SELECT datname FROM pg_database WHERE datname LIKE :p"),
                {"p": f"%\\_{RUN_TAG}\\_%"},
            )
            .scalars()
            .all()
        )
        for name in names:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()
    if _source_models is not None:
        shutil.rmtree(_source_models, ignore_errors=True)
