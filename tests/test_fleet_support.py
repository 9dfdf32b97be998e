"""What the fleet tests share: an API with short lease timings, studies, real workers.

Timings: heartbeat every 0.5 s, a lease is reaped after 2 s of silence, the
reaper looks every 0.5 s, so a dead worker's trial is re-queued within ~3 s.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import FrozenTrial

from tests.conftest import (
    REPO_ROOT,
    ApiServer,
    create_migrated_database,
    drop_database,
    start_api_server,
    subprocess_env,
)

LEASE_TIMINGS = {"heartbeat_interval_s": 0.5, "grace_period_s": 2, "reaper_interval_s": 0.5}
# A dead worker's trial is failed by then: grace + reaper interval + slack for a busy machine.
REAP_DEADLINE_S = 2 + 0.5 + 6


def wait_until(predicate: Callable[[], Any], *, timeout_s: float, what: str, every_s=0.05):
    """Poll until predicate() is truthy; returns its value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(every_s)


def study_spec(name: str, **overrides: Any) -> dict:
    spec: dict[str, Any] = {
        "name": name,
        "source_model": "builtin:digits-cnn",
        "dataset": "builtin:digits-5to9",
        "objectives": [{"metric": "accuracy", "direction": "maximize"}],
        "search_space": {
            "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            "dropout": {"type": "float", "low": 0.0, "high": 0.6},
        },
        "sampler": {"type": "tpe", "seed": 7},
        "pruner": {"type": "none"},
        "budget": {"max_trials": 10, "epochs": 3, "max_retries": 2},
    }
    spec.update(overrides)
    return spec


@dataclass
class FleetEnv:
    """A migrated database, an API process, a worker token and the workers started."""

    database_url: str
    api: ApiServer
    worker_token: str
    log_dir: Path
    engine: sa.Engine
    storage: optuna.storages.RDBStorage
    workers: list[subprocess.Popen] = field(default_factory=list)
    studies: list[int] = field(default_factory=list)

    # Studies -----------------------------------------------------------------

    def create_study(
        self, name: str, *, priority: int = 0, owner: str = "fleet-tests", **overrides: Any
    ) -> int:
        """A running study, made the way the study API makes one; returns its id."""
        from service.db import session_scope
        from service.models import StudyRecord
        from service.optuna_store import create_optuna_study
        from tunefleet.spec import StudySpec

        spec = StudySpec.model_validate(study_spec(name, priority=priority, **overrides))
        with session_scope(self.engine) as session:
            record = StudyRecord(
                owner=owner,
                name=name,
                spec=spec.model_dump(mode="json"),
                state="running",
                priority=priority,
                optuna_study_name=f"{owner}.{name}",
            )
            session.add(record)
            session.flush()
            record.optuna_study_id = create_optuna_study(
                self.storage, name=record.optuna_study_name, spec=spec, study_key=record.id
            )
            study_id = record.id
        self.studies.append(study_id)
        return study_id

    def token(self, *, scope: str = "worker", owner: str = "fleet", **options: Any) -> str:
        """Another token (options: expires_in, studies_of), made in this process."""
        return _make_token(self.database_url, scope=scope, owner=owner, **options)

    def set_study_state(self, study_id: int, state: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE tf_studies SET state = :s WHERE id = :i"),
                {"s": state, "i": study_id},
            )

    def study_state(self, study_id: int) -> str:
        with self.engine.connect() as conn:
            return conn.execute(
                sa.text("SELECT state FROM tf_studies WHERE id = :i"), {"i": study_id}
            ).scalar_one()

    def enqueue(self, study_id: int, params: dict) -> FrozenTrial:
        from service.optuna_store import enqueue_trial

        return enqueue_trial(self.storage, optuna_study_id=self._optuna_id(study_id), params=params)

    def _optuna_id(self, study_id: int) -> int:
        with self.engine.connect() as conn:
            return conn.execute(
                sa.text("SELECT optuna_study_id FROM tf_studies WHERE id = :i"), {"i": study_id}
            ).scalar_one()

    def trials(self, study_id: int) -> list[FrozenTrial]:
        return self.storage.get_all_trials(self._optuna_id(study_id))

    def states(self, study_id: int) -> dict[str, int]:
        counts: dict[str, int] = {}
        for trial in self.trials(study_id):
            counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
        return counts

    def trial(self, trial_id: int) -> FrozenTrial:
        return self.storage.get_trial(trial_id)

    def leases(self, study_id: int) -> list[sa.Row]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    sa.text("SELECT * FROM tf_leases WHERE study_id = :i ORDER BY trial_id"),
                    {"i": study_id},
                )
            )

    # The worker protocol ----------------------------------------------------

    def client(self, token: str | None = None, *, send_secrets: bool = True) -> httpx.Client:
        """A client of the worker protocol. Like a worker, it keeps the lease secret of
        each assignment it gets and sends it with the calls on that trial (unless
        send_secrets is false)."""
        secrets: dict[str, str] = {}

        def keep_secret(response: httpx.Response) -> None:
            if response.request.url.path.endswith("/leases") and response.status_code == 201:
                response.read()
                body = response.json()
                secrets[str(body["trial_id"])] = body["lease_secret"]

        def send_secret(request: httpx.Request) -> None:
            match = re.search(r"/trials/(\d+)/", request.url.path)
            if send_secrets and match and match[1] in secrets:
                request.headers.setdefault("X-Lease-Secret", secrets[match[1]])

        return httpx.Client(
            base_url=f"{self.api.url}/api/v1",
            headers={"Authorization": f"Bearer {token or self.worker_token}"},
            timeout=30,
            event_hooks={"request": [send_secret], "response": [keep_secret]},
        )

    def start_worker(
        self,
        *args: str,
        objective: str | None = "quadratic",
        epoch_s: float = 0.02,
        name: str = "",
        service_url: str | None = None,
        token: str | None = None,
        settings: dict[str, Any] | None = None,
    ) -> subprocess.Popen:
        """A real `python -m workers` process running a test objective (or, given as
        module:function, any objective; None: the trial engine), its token in
        TUNEFLEET_TOKEN as in production."""
        name = name or f"worker-{len(self.workers)}"
        env = subprocess_env(
            backoff_base_s=0.1,
            backoff_max_s=1,
            poll_interval_max_s=0.5,
            token=token or self.worker_token,
            **(settings or {}),
        )
        env["TF_TEST_EPOCH_S"] = str(epoch_s)
        log = open(self.log_dir / f"{name}.log", "w")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "workers",
                "--service",
                service_url or self.api.url,
                "--worker-id",
                name,
                "--device",
                "cpu",
                *_objective_args(objective),
                *args,
            ],
            env=env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        proc.name = name  # type: ignore[attr-defined]
        self.workers.append(proc)
        return proc

    def worker_log(self, proc: subprocess.Popen) -> str:
        return (self.log_dir / f"{proc.name}.log").read_text(errors="replace")  # type: ignore[attr-defined]

    def wait_workers(self, procs: list[subprocess.Popen], timeout_s: float) -> list[int]:
        deadline = time.monotonic() + timeout_s
        codes = []
        for proc in procs:
            try:
                codes.append(proc.wait(timeout=max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                tail = self.worker_log(proc)[-3000:]
                raise AssertionError(
                    f"{proc.name} still running after {timeout_s}s:\n{tail}"
                ) from None
        return codes

    def cleanup(self) -> None:
        """Stop what a test left behind so that the next test of the module starts clean."""
        for proc in self.workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.workers.clear()
        for study_id in self.studies:
            self.set_study_state(study_id, "stopped")
        self.studies.clear()


def _objective_args(objective: str | None) -> list[str]:
    if objective is None:
        return []
    return [
        "--objective",
        objective if ":" in objective else f"tests.workers.objectives:{objective}",
    ]


def _worker_token(database_url: str) -> str:
    """A worker token, made in this process (`tunefleet token create` is tested elsewhere)."""
    return _make_token(database_url, scope="worker", owner="fleet")


def _make_token(database_url: str, *, scope: str, owner: str, **options: Any) -> str:
    from service import auth
    from service.config import load_settings
    from service.db import make_engine, session_scope

    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    try:
        with session_scope(engine) as session:
            return auth.create_token(
                session, scope=scope, owner=owner, secret=load_settings().token_secret, **options
            )
    finally:
        engine.dispose()


def make_fleet_env(tmp_dir: Path, database_url: str, **settings: Any) -> Iterator[FleetEnv]:
    api = start_api_server(database_url, tmp_dir, **{**LEASE_TIMINGS, **settings})
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        storage = optuna.storages.RDBStorage(
            database_url, engine_kwargs={"poolclass": sa.pool.NullPool}
        )
    env = FleetEnv(
        database_url=database_url,
        api=api,
        worker_token=_worker_token(database_url),
        log_dir=tmp_dir,
        engine=engine,
        storage=storage,
    )
    try:
        yield env
    finally:
        env.cleanup()
        api.stop()
        storage.engine.dispose()
        engine.dispose()


@pytest.fixture(scope="module")
def fleet_env_module(tmp_path_factory) -> Iterator[FleetEnv]:
    """One database and API process for a test module; each test gets it clean via fleet_env."""
    url = create_migrated_database("tf_fleet")
    try:
        yield from make_fleet_env(tmp_path_factory.mktemp("fleet"), url)
    finally:
        drop_database(url)


@pytest.fixture
def fleet_env(fleet_env_module: FleetEnv) -> Iterator[FleetEnv]:
    yield fleet_env_module
    fleet_env_module.cleanup()
