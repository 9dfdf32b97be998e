"""The whole fleet: many real workers, priorities, pruning, and PostgreSQL going away."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import create_database, drop_database, free_port, start_api_server
from tests.test_fleet_support import LEASE_TIMINGS, FleetEnv, make_fleet_env, wait_until

PG_BIN = Path("/usr/lib/postgresql/15/bin")
# Many workers on two cores: a longer grace period, so that a heartbeat that is
# late because the machine is busy does not cost a trial.
BUSY_TIMINGS = {**LEASE_TIMINGS, "grace_period_s": 6}


@pytest.fixture(scope="module")
def busy_fleet_module(tmp_path_factory) -> Iterator[FleetEnv]:
    """One database and API process (BUSY_TIMINGS) for the tests of this module."""
    from service.migrate import migrate

    url = create_database("tf_fleet")
    migrate(url)
    try:
        yield from make_fleet_env(tmp_path_factory.mktemp("fleet"), url, **BUSY_TIMINGS)
    finally:
        drop_database(url)


@pytest.fixture
def fleet_env(busy_fleet_module: FleetEnv) -> Iterator[FleetEnv]:
    yield busy_fleet_module
    busy_fleet_module.cleanup()


def test_sixteen_workers_share_one_study_and_run_each_trial_once(fleet_env: FleetEnv):
    budget = 32
    study_id = fleet_env.create_study("sixteen", budget={"max_trials": budget, "epochs": 1})
    workers = [fleet_env.start_worker("--idle-exit", "3", epoch_s=0.01) for _ in range(16)]
    assert fleet_env.wait_workers(workers, timeout_s=150) == [0] * 16

    trials = fleet_env.trials(study_id)
    states = Counter(t.state.name for t in trials)
    assert states["COMPLETE"] == budget, states
    assert states["COMPLETE"] + states["FAIL"] == len(trials), states
    assert len({t.number for t in trials}) == len(trials)
    leases = {r.trial_id: r for r in fleet_env.leases(study_id)}
    # Every trial was handed out exactly once (one lease row per trial), to the
    # worker whose name the trial carries.
    assert sorted(leases) == sorted(t._trial_id for t in trials)
    for trial in trials:
        lease = leases[trial._trial_id]
        assert trial.user_attrs["worker_id"] == lease.worker_id
        if trial.state.name == "COMPLETE":
            assert lease.state == "completed"
        else:  # only a lease the machine was too busy to keep alive, and then re-run
            assert lease.state == "expired" and "retried_as" in trial.user_attrs
    assert len({r.worker_id for r in leases.values()}) > 1
    assert fleet_env.study_state(study_id) == "completed"


def test_two_api_processes_never_hand_out_more_than_the_budget(fleet_env: FleetEnv, tmp_path):
    second_api = start_api_server(fleet_env.database_url, tmp_path, **BUSY_TIMINGS)
    try:
        budget = 16
        study_id = fleet_env.create_study("two-apis", budget={"max_trials": budget, "epochs": 1})
        workers = [
            fleet_env.start_worker(
                "--idle-exit", "2", epoch_s=0.01, service_url=(second_api.url if i % 2 else None)
            )
            for i in range(8)
        ]
        assert fleet_env.wait_workers(workers, timeout_s=120) == [0] * 8
    finally:
        second_api.stop()
    trials = fleet_env.trials(study_id)
    assert Counter(t.state.name for t in trials) == {"COMPLETE": budget}
    assert sorted(t.number for t in trials) == list(range(budget))
    assert len(fleet_env.leases(study_id)) == budget


def test_two_studies_share_workers_in_proportion_to_priority(fleet_env: FleetEnv):
    # Weights priority + 1: 4 to 1, so five workers split 4 and 1.
    high = fleet_env.create_study("high", priority=3, budget={"max_trials": 500, "epochs": 2})
    low = fleet_env.create_study("low", priority=0, budget={"max_trials": 500, "epochs": 2})
    workers = [fleet_env.start_worker("--idle-exit", "1", epoch_s=0.02) for _ in range(5)]

    def completed() -> tuple[int, int]:
        return tuple(fleet_env.states(s).get("COMPLETE", 0) for s in (high, low))

    wait_until(lambda: sum(completed()) >= 30, timeout_s=120, what="30 trials", every_s=0.2)
    fleet_env.set_study_state(high, "stopped")
    fleet_env.set_study_state(low, "stopped")
    assert fleet_env.wait_workers(workers, timeout_s=60) == [0] * 5
    n_high, n_low = completed()
    assert n_low > 0
    assert 2.5 <= n_high / n_low <= 6, (n_high, n_low)


def test_hyperband_prunes_trials_with_poor_intermediate_values(fleet_env: FleetEnv):
    study_id = fleet_env.create_study(
        "hyperband",
        pruner={"type": "hyperband", "min_resource": 1, "reduction_factor": 3},
        budget={"max_trials": 12, "epochs": 4},
    )
    workers = [fleet_env.start_worker("--idle-exit", "2", epoch_s=0.01) for _ in range(3)]
    assert fleet_env.wait_workers(workers, timeout_s=120) == [0] * 3
    trials = fleet_env.trials(study_id)
    states = Counter(t.state.name for t in trials)
    assert states["COMPLETE"] + states["PRUNED"] == 12 and states["PRUNED"] >= 1, states
    best = max(t.value for t in trials if t.state.name == "COMPLETE")
    for trial in trials:
        if trial.state.name == "PRUNED":
            # The objective reports score * epoch / 4: a pruned trial's score is no
            # better than the best finished trial's (the best of a bracket is never pruned).
            score = trial.intermediate_values[trial.last_step] * 4 / trial.last_step
            assert score <= best + 1e-9
    assert fleet_env.study_state(study_id) == "completed"


class ThrowawayPostgres:
    """A PostgreSQL cluster of the test's own, which it can stop and start."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="tf-pg-"))
        os.chmod(self.base, 0o777)  # PostgreSQL runs as postgres, never as root
        self.data = self.base / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as_postgres(PG_BIN / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres")

    def _as_postgres(self, *cmd: object) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(
            [*prefix, *map(str, cmd)], check=True, capture_output=True, text=True, timeout=120
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(PG_BIN / "pg_ctl", "-D", self.data, "-o", options,
                          "-l", self.base / "postgres.log", "-w", "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres(PG_BIN / "pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def postgres_outage_fleet(tmp_path: Path) -> Iterator[tuple[FleetEnv, ThrowawayPostgres]]:
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"needs PostgreSQL's server binaries in {PG_BIN}")
    pg = ThrowawayPostgres()
    try:
        pg.start()
        from service.migrate import migrate

        migrate(pg.url)
        for env in make_fleet_env(tmp_path, pg.url):
            yield env, pg
    finally:
        pg.remove()


def test_postgres_outage_mid_study_loses_nothing_and_never_answers_500(postgres_outage_fleet):
    env, pg = postgres_outage_fleet
    budget = 24
    study_id = env.create_study("outage", budget={"max_trials": budget, "epochs": 3})
    workers = [env.start_worker("--idle-exit", "4", epoch_s=0.1) for _ in range(4)]
    wait_until(
        lambda: env.states(study_id).get("COMPLETE", 0) >= 6,
        timeout_s=60,
        what="a few trials before the outage",
        every_s=0.1,
    )
    pg.stop()
    down_at = time.monotonic()
    with env.client() as client:
        during = client.post("/leases", json={"worker_id": "probe", "device": "cpu"})
        ready = httpx.get(f"{env.api.url}/readyz", timeout=10)
    assert during.status_code == 503, during.text
    assert int(during.headers["Retry-After"]) > 0
    assert ready.status_code == 503
    # Keep it down longer than the grace period: leases could not heartbeat meanwhile.
    time.sleep(max(0.0, 3.0 - (time.monotonic() - down_at)))
    pg.start()

    assert env.wait_workers(workers, timeout_s=120) == [0] * 4
    trials = env.trials(study_id)
    states = Counter(t.state.name for t in trials)
    assert states["COMPLETE"] == budget, states
    assert states["RUNNING"] == states["WAITING"] == 0, states
    assert len({t.number for t in trials}) == len(trials)
    # A trial may only have failed because the outage cut its lease off, and then it was re-run.
    for trial in trials:
        if trial.state.name == "FAIL":
            assert "retried_as" in trial.user_attrs, trial.user_attrs
    completed_leases = [r for r in env.leases(study_id) if r.state == "completed"]
    assert len(completed_leases) == budget
    api_log = env.api.log()
    assert "Traceback" not in api_log and "Internal Server Error" not in api_log, api_log[-5000:]
    for worker in workers:
        assert "(500" not in env.worker_log(worker)
    assert env.study_state(study_id) == "completed"


def test_two_owners_share_eight_workers_evenly_whatever_their_priorities(fleet_env: FleetEnv):
    # One owner has three studies at priority 100, the other one at priority 0:
    # fair share goes between owners first, so each gets about half the leases.
    budget = {"max_trials": 500, "epochs": 2}
    rich = [
        fleet_env.create_study(f"rich-{i}", owner="rich", priority=100, budget=budget)
        for i in range(3)
    ]
    poor = fleet_env.create_study("poor", owner="poor", priority=0, budget=budget)
    workers = [fleet_env.start_worker("--idle-exit", "1", epoch_s=0.05) for _ in range(8)]

    def completed() -> tuple[int, int]:
        n_rich = sum(fleet_env.states(s).get("COMPLETE", 0) for s in rich)
        return n_rich, fleet_env.states(poor).get("COMPLETE", 0)

    wait_until(lambda: sum(completed()) >= 48, timeout_s=180, what="48 trials", every_s=0.3)
    for study_id in [*rich, poor]:
        fleet_env.set_study_state(study_id, "stopped")
    assert fleet_env.wait_workers(workers, timeout_s=60) == [0] * 8
    n_rich, n_poor = completed()
    assert 0.6 <= n_rich / n_poor <= 1.67, (n_rich, n_poor)
