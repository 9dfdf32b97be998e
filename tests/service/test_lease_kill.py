"""An API process SIGKILLed inside a lease, at a known step, leaves nothing behind.

Two real `tunefleet serve` processes share one PostgreSQL database. For each step
of the lease path, the test's own transaction takes a lock that the lease must
wait for at that step (no hook in the service: the lease runs as in production),
sends the lease to process 1, waits until pg_stat_activity shows process 1's
backend waiting for that lock at that statement, SIGKILLs process 1 and lets
the lock go. PostgreSQL then rolls the killed process's transaction back. Then:
no RUNNING trial without an active lease, no lease row without its trial, the
study's rows as they were; and the same worker_id, asking process 2, gets a
trial and the study runs to exactly its budget (each trial completed once,
numbers unique).

The steps, as the lease path runs them (service/leasing.py, service/handout.py,
service/lease_rows.py), with the lock that stops each:

- `study-row`: the study's row lock (`SELECT ... FROM tf_studies ... FOR UPDATE`),
  stopped by the same row lock.
- `optuna-study-row`: Optuna's study row, locked before a new trial's number is
  taken, stopped by `SELECT ... FROM studies ... FOR UPDATE`.
- `trial-row`: the new trial's INSERT into `trials`, stopped by
  `LOCK TABLE trials IN SHARE MODE` (plain reads of the study pass it).
- `trial-params`, `system-attrs`, `lease-row`: the INSERTs into `trial_params`,
  `trial_system_attributes` and `tf_leases`, each stopped by a SHARE lock on its
  table, with the rows of the steps before it written (uncommitted).
- `claim-select`: the claim of an enqueued WAITING trial (`SELECT ... FOR UPDATE
  SKIP LOCKED`), stopped by `LOCK TABLE trials IN EXCLUSIVE MODE`. A row lock on
  the WAITING trial does not stop it: SKIP LOCKED passes over that row and the
  lease samples a new trial instead.
- `claim-update`: the claimed row set RUNNING (`UPDATE trials`), stopped by a
  SHARE lock on `trials`, which the claim's row lock passes.
- `claimed-params`, `claimed-system-attrs`, `claimed-lease-row`: the claimed
  trial's parameters, system attributes (an upsert) and lease row.
- `batch-lease-row`: a batch of two (POST /api/v1/leases/batch), stopped at its
  lease rows, with both trials and their parameters written.

The random sampler writes no system attribute; the steps on
`trial_system_attributes` use NSGA-II, which records each trial's generation.

Not reachable this way: the new trial's number (`UPDATE trials SET number`
right after its INSERT: the lease already holds the table lock that UPDATE
needs, and no other transaction sees the uncommitted row to lock it), and the
COMMIT itself (it waits for no lock: there is no deferred constraint). A kill
just after the commit is an answer lost: the same worker_id gets that lease
back (tests/service/api/test_handout.py,
test_a_lease_whose_answer_was_lost_is_given_again).
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.conftest import ApiServer, create_token, start_api_server
from tests.test_fleet_support import study_spec, wait_until

MAX_TRIALS = 3
ENQUEUED = {"lr": 0.01, "dropout": 0.25}
# The application_name of the processes killed, with a number each: pg_stat_activity
# tells their backends apart by it.
VICTIM = "tunefleet-lease-kill-victim"


@dataclass(frozen=True)
class Step:
    """A step of the lease path: the lock that stops the lease there and the statement
    the lease then waits at (a regular expression on pg_stat_activity's query)."""

    lock: str
    waits_at: str
    sampler: str = "random"
    enqueued: bool = False
    batch: bool = False


_SHARE = "LOCK TABLE {} IN SHARE MODE"
STEPS = {
    "study-row": Step(
        "SELECT id FROM tf_studies WHERE id = :study_id FOR UPDATE",
        r"FROM tf_studies WHERE .* FOR UPDATE$",
    ),
    "optuna-study-row": Step(
        "SELECT study_id FROM studies WHERE study_id = :optuna_study_id FOR UPDATE",
        r"FROM studies WHERE studies\.study_id = .* FOR UPDATE$",
    ),
    "trial-row": Step(_SHARE.format("trials"), r"^INSERT INTO trials "),
    "trial-params": Step(_SHARE.format("trial_params"), r"^INSERT INTO trial_params "),
    "system-attrs": Step(
        _SHARE.format("trial_system_attributes"),
        r"^INSERT INTO trial_system_attributes ",
        sampler="nsga2",
    ),
    "lease-row": Step(_SHARE.format("tf_leases"), r"^INSERT INTO tf_leases "),
    "claim-select": Step(
        "LOCK TABLE trials IN EXCLUSIVE MODE",
        r"FROM trials WHERE .* FOR UPDATE SKIP LOCKED$",
        enqueued=True,
    ),
    "claim-update": Step(_SHARE.format("trials"), r"^UPDATE trials SET state=", enqueued=True),
    "claimed-params": Step(
        _SHARE.format("trial_params"), r"^INSERT INTO trial_params ", enqueued=True
    ),
    "claimed-system-attrs": Step(
        _SHARE.format("trial_system_attributes"),
        r"^INSERT INTO trial_system_attributes .* ON CONFLICT",
        sampler="nsga2",
        enqueued=True,
    ),
    "claimed-lease-row": Step(
        _SHARE.format("tf_leases"), r"^INSERT INTO tf_leases ", enqueued=True
    ),
    "batch-lease-row": Step(_SHARE.format("tf_leases"), r"^INSERT INTO tf_leases ", batch=True),
}


@dataclass
class Fleet:
    """The database, the API process that survives every case, and the tokens."""

    database_url: str
    survivor: ApiServer
    engine: sa.Engine
    user: httpx.Client
    worker: httpx.Client

    def create_study(self, name: str, step: Step) -> dict:
        spec = study_spec(
            name,
            sampler={"type": step.sampler, "seed": 3},
            budget={"max_trials": MAX_TRIALS, "epochs": 1},
        )
        answer = self.user.post(f"{self.survivor.url}/api/v1/studies", json=spec)
        assert answer.status_code == 201, answer.text
        return answer.json()

    def enqueue(self, study: dict) -> int:
        answer = self.user.post(
            f"{self.survivor.url}/api/v1/studies/{study['id']}/trials", json={"params": ENQUEUED}
        )
        assert answer.status_code == 201, answer.text
        return answer.json()["number"]

    def optuna_study_id(self, study: dict) -> int:
        with self.engine.connect() as conn:
            return conn.execute(
                sa.text("SELECT study_id FROM studies WHERE study_name = :name"),
                {"name": study["optuna_study_name"]},
            ).scalar_one()

    def footprint(self, study: dict) -> dict[str, object]:
        """The study's rows: its trials (id, number, state), how many parameters and
        system attributes they have, its leases."""
        trials_of = "SELECT trial_id FROM trials WHERE study_id = :optuna_study_id"
        ids = {"study_id": study["id"], "optuna_study_id": self.optuna_study_id(study)}
        with self.engine.connect() as conn:

            def rows(sql: str) -> list[tuple]:
                return [tuple(row) for row in conn.execute(sa.text(sql), ids)]

            return {
                "trials": rows(
                    "SELECT trial_id, number, state FROM trials "
                    "WHERE study_id = :optuna_study_id ORDER BY trial_id"
                ),
                "params": rows(
                    f"SELECT count(*) FROM trial_params WHERE trial_id IN ({trials_of})"
                ),
                "system_attrs": rows(
                    f"SELECT count(*) FROM trial_system_attributes WHERE trial_id IN ({trials_of})"
                ),
                "leases": rows(
                    "SELECT trial_id, worker_id, state FROM tf_leases "
                    "WHERE study_id = :study_id ORDER BY trial_id"
                ),
            }

    def leftovers(self) -> dict[str, list[tuple]]:
        """What a hand-out must never leave, in any study."""
        with self.engine.connect() as conn:
            return {
                "running trials without an active lease": conn.execute(
                    sa.text(
                        "SELECT t.trial_id FROM trials t LEFT JOIN tf_leases l "
                        "ON l.trial_id = t.trial_id AND l.state = 'active' "
                        "WHERE t.state = 'RUNNING' AND l.trial_id IS NULL"
                    )
                ).all(),
                "leases without their trial": conn.execute(
                    sa.text(
                        "SELECT l.trial_id FROM tf_leases l LEFT JOIN trials t "
                        "ON t.trial_id = l.trial_id WHERE t.trial_id IS NULL"
                    )
                ).all(),
            }

    def waiting_lease(self, victim: ApiServer, pattern: str) -> tuple[str, list[int]] | None:
        """The victim's backend waiting for a lock at a statement matching `pattern`:
        (its query, the backends it waits for)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT query, pg_blocking_pids(pid) FROM pg_stat_activity "
                    "WHERE application_name = :name AND wait_event_type = 'Lock'"
                ),
                {"name": backend_name(victim)},
            ).all()
        for query, blockers in rows:
            statement = " ".join(query.split())  # SQLAlchemy's line breaks, as spaces
            if re.search(pattern, statement):
                return statement, list(blockers)
        return None

    def backends(self, server: ApiServer) -> int:
        """How many connections the server has open (or PostgreSQL still serves)."""
        with self.engine.connect() as conn:
            return conn.execute(
                sa.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"),
                {"name": backend_name(server)},
            ).scalar_one()

    def lease(self, server: ApiServer, worker_id: str, *, batch: bool) -> httpx.Response:
        path, body = lease_call(worker_id, batch=batch)
        return self.worker.post(server.url + path, json=body)

    def complete(self, assignment: dict) -> None:
        answer = self.worker.post(
            f"{self.survivor.url}/api/v1/trials/{assignment['trial_id']}/complete",
            json={"values": {"accuracy": 0.5}},
            headers={"X-Lease-Secret": assignment["lease_secret"]},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["state"] == "complete"


def backend_name(server: ApiServer) -> str:
    """The application_name of the server's connections."""
    return make_url(server.database_url).query["application_name"]


def lease_call(worker_id: str, *, batch: bool) -> tuple[str, dict]:
    if batch:
        return "/api/v1/leases/batch", {"worker_id": worker_id, "device": "cpu", "count": 2}
    return "/api/v1/leases", {"worker_id": worker_id, "device": "cpu"}


@pytest.fixture(scope="module")
def fleet(module_pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    survivor = start_api_server(module_pg_url, tmp_path_factory.mktemp("survivor"))
    engine = sa.create_engine(module_pg_url, poolclass=sa.pool.NullPool)

    def client(scope: str, owner: str) -> httpx.Client:
        token = create_token(module_pg_url, scope=scope, owner=owner)
        return httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=30)

    fleet = Fleet(
        database_url=module_pg_url,
        survivor=survivor,
        engine=engine,
        user=client("user", "alice"),
        worker=client("worker", "gpu-pool"),
    )
    yield fleet
    fleet.user.close()
    fleet.worker.close()
    survivor.stop()
    engine.dispose()


class Victims:
    """The API processes to kill, on the same database as the survivor, their
    connections named VICTIM-<n>. The next one starts in the background while a case
    runs, so that the cases do not wait for one start after the other."""

    def __init__(self, database_url: str, log_dir: Path) -> None:
        self.database_url = database_url
        self.log_dir = log_dir
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.started: list[ApiServer] = []
        self.next = self._start()

    def _start(self) -> Future[ApiServer]:
        name = f"{VICTIM}-{len(self.started)}"
        url = f"{self.database_url}?application_name={name}"
        return self.pool.submit(start_api_server, url, self.log_dir)

    def take(self) -> ApiServer:
        server = self.next.result()
        self.started.append(server)
        self.next = self._start()
        return server

    def close(self) -> None:
        self.pool.shutdown()
        with suppress(Exception):
            self.started.append(self.next.result())
        for server in self.started:
            server.stop()


@pytest.fixture(scope="module")
def victims(module_pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Victims]:
    victims = Victims(module_pg_url, tmp_path_factory.mktemp("victims"))
    yield victims
    victims.close()


@pytest.fixture
def victim(victims: Victims) -> Iterator[ApiServer]:
    """A second API process on the database, killed by the case (stopped, if not)."""
    server = victims.take()
    yield server
    server.stop()


@pytest.fixture
def study(fleet: Fleet, name: str) -> Iterator[dict]:
    """The case's study, deleted afterwards with whatever a failed case left in it, so
    that the next case's lease finds no other study with work."""
    study = fleet.create_study(f"kill-{name}", STEPS[name])
    yield study
    fleet.user.delete(f"{fleet.survivor.url}/api/v1/studies/{study['id']}").raise_for_status()


@contextmanager
def lease_in_flight(
    fleet: Fleet, victim: ApiServer, worker_id: str, *, batch: bool
) -> Iterator[Future]:
    """The lease sent to the victim in a thread; the victim is killed on the way out
    at the latest, so that the thread always ends."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        try:
            yield pool.submit(fleet.lease, victim, worker_id, batch=batch)
        finally:
            victim.proc.kill()
            victim.proc.wait()


@pytest.mark.parametrize("name", list(STEPS))
def test_an_api_process_killed_inside_a_lease_leaves_nothing_behind(
    victim: ApiServer, fleet: Fleet, study: dict, name: str
) -> None:
    step = STEPS[name]
    waiting_number = fleet.enqueue(study) if step.enqueued else None
    worker_id = f"w-{name}"
    before = fleet.footprint(study)
    ids = {"study_id": study["id"], "optuna_study_id": fleet.optuna_study_id(study)}
    with fleet.engine.connect() as lock:
        holder = lock.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        lock.execute(sa.text(step.lock), ids)
        with lease_in_flight(fleet, victim, worker_id, batch=step.batch) as asked:
            query, blockers = wait_until(
                lambda: fleet.waiting_lease(victim, step.waits_at),
                timeout_s=30,
                what=f"the lease to wait at {step.waits_at!r}",
            )
            assert blockers == [holder], query
            victim.proc.send_signal(signal.SIGKILL)  # no handler runs, no rollback is sent
            victim.proc.wait()
        with pytest.raises(httpx.TransportError):
            asked.result()  # the worker never got an answer
        lock.rollback()
    # The killed process's transaction ends when its backend sees the connection gone.
    wait_until(lambda: fleet.backends(victim) == 0, timeout_s=30, what="the victim's backends")
    assert fleet.leftovers() == {
        "running trials without an active lease": [],
        "leases without their trial": [],
    }
    assert fleet.footprint(study) == before

    # The worker asks again, with the same worker_id, the process that is left.
    completed: list[dict] = []
    while (answer := fleet.lease(fleet.survivor, worker_id, batch=step.batch)).status_code == 201:
        assignments = answer.json()["assignments"] if step.batch else [answer.json()]
        if waiting_number is not None and not completed:
            assert assignments[0]["number"] == waiting_number
            assert assignments[0]["params"] == pytest.approx(ENQUEUED)
        for assignment in assignments:
            fleet.complete(assignment)
            completed.append(assignment)
    assert answer.status_code == 204, answer.text
    numbers = sorted(a["number"] for a in completed)
    assert numbers == list(range(MAX_TRIALS))
    assert len({a["trial_id"] for a in completed}) == MAX_TRIALS
    after = fleet.footprint(study)
    assert [state for _, _, state in after["trials"]] == ["COMPLETE"] * MAX_TRIALS
    assert [(state, who) for _, who, state in after["leases"]] == [
        ("completed", worker_id)
    ] * MAX_TRIALS
    assert fleet.leftovers()["running trials without an active lease"] == []
    shown = fleet.user.get(f"{fleet.survivor.url}/api/v1/studies/{study['id']}").json()
    assert shown["state"] == "completed"
