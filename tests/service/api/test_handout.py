"""Faults inside a lease: each statement of the lease path fails in turn (or its
connection is dropped under it), then the worker asks again with the same
worker_id. Nothing is left behind: no RUNNING trial without an active lease,
the budget is exact, every trial completes once."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import optuna
import pytest
import sqlalchemy as sa
from sqlalchemy import event

from service.api import leases as lease_routes
from service.errors import DatabaseUnavailable
from service.reaper import reap_stale_leases
from service.search import distributions
from tests.service.api.conftest import LiveApi, create_study, optuna_storage
from tunefleet.spec import StudySpec

WORKER = "gpu-node-1"


class Faults:
    """Counts the statements a lease runs (on both engines, in the request's thread)
    and fails the `fail_at`-th one: the statement raises, or its connection is closed
    under it (`drop`)."""

    def __init__(self, api: LiveApi) -> None:
        self.engines = [api.app.state.engine, api.app.state.storage.engine]
        self.local = threading.local()
        self.fail_at: int | None = None
        self.drop = False
        self.seen = 0
        self.fired = False

    def _before(self, conn, _cursor, statement, _params, _context, _many) -> None:
        if not getattr(self.local, "in_lease", False):
            return
        self.seen += 1
        if self.seen == self.fail_at and not self.fired:
            self.fired = True
            if self.drop:
                conn.connection.dbapi_connection.close()  # the driver then fails for real
            else:
                raise sa.exc.OperationalError(statement, None, Exception("injected fault"))

    def _commit(self, _conn) -> None:
        self._before(_conn, None, "COMMIT", None, None, False)

    @contextmanager
    def installed(
        self, monkeypatch: pytest.MonkeyPatch, *, batch: bool = False
    ) -> Iterator[Faults]:
        module, name = (
            (lease_routes.batch_leasing, "lease_trials")
            if batch
            else (lease_routes.leasing, "lease_trial")
        )
        real = getattr(module, name)

        def traced(*args, **kwargs):
            self.local.in_lease = True
            try:
                return real(*args, **kwargs)
            finally:
                self.local.in_lease = False

        monkeypatch.setattr(module, name, traced)
        for engine in self.engines:
            event.listen(engine, "before_cursor_execute", self._before)
            event.listen(engine, "commit", self._commit)
        try:
            yield self
        finally:
            for engine in self.engines:
                event.remove(engine, "before_cursor_execute", self._before)
                event.remove(engine, "commit", self._commit)

    def arm(self, fail_at: int | None, *, drop: bool = False) -> None:
        self.fail_at, self.drop, self.seen, self.fired = fail_at, drop, 0, False


def _lease(api: LiveApi, worker_id: str):
    return api.as_(WORKER).post("/api/v1/leases", json={"worker_id": worker_id, "device": "cpu"})


def _complete(api: LiveApi, assignment: dict, value: float) -> None:
    answer = api.as_(WORKER).post(
        f"/api/v1/trials/{assignment['trial_id']}/complete",
        json={"values": {"accuracy": value}},
        headers={"X-Lease-Secret": assignment["lease_secret"]},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["state"] == "complete"


def _ghosts(api: LiveApi) -> list[tuple]:
    """RUNNING trials of any study without an active lease."""
    with sa.create_engine(api.database_url).connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT t.trial_id, t.number FROM trials t LEFT JOIN tf_leases l "
                "ON l.trial_id = t.trial_id AND l.state = 'active' "
                "WHERE t.state = 'RUNNING' AND l.trial_id IS NULL"
            )
        ).all()


def _states(api: LiveApi, study: dict) -> dict[str, int]:
    with sa.create_engine(api.database_url).connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT t.state, count(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
                "WHERE s.study_name = :name GROUP BY t.state"
            ),
            {"name": study["optuna_study_name"]},
        ).all()
    return {str(state): n for state, n in rows}


@pytest.mark.parametrize("enqueued", [False, True], ids=["sampled", "claimed"])
@pytest.mark.parametrize("drop", [False, True], ids=["statement-fails", "connection-dropped"])
def test_a_fault_at_any_step_of_a_lease_leaves_no_ghost(
    live_api: LiveApi, monkeypatch: pytest.MonkeyPatch, enqueued: bool, drop: bool
) -> None:
    faults = Faults(live_api)
    budget = 40
    study = create_study(live_api.as_("alice"), budget={"max_trials": budget})
    completed: list[int] = []
    with faults.installed(monkeypatch):
        # Lease k fails at its k-th statement, until a lease runs fewer statements than k.
        for step in itertools.count(1):
            if enqueued:
                live_api.as_("alice").post(
                    f"/api/v1/studies/{study['id']}/trials",
                    json={"params": {"lr": 0.001 * step, "activation": "gelu", "head_depth": 1}},
                ).raise_for_status()
            worker_id = f"w-{enqueued}-{drop}-{step}"
            faults.arm(step, drop=drop)
            answer = _lease(live_api, worker_id)
            fired = faults.fired
            # A read that Optuna retries on its own may let the lease through.
            assert answer.status_code in (201, 503), (step, answer.text)
            if answer.status_code == 503:
                assert fired
                assert answer.headers["Retry-After"]
                assert _ghosts(live_api) == [], f"fault at statement {step}"
                faults.arm(None)
                answer = _lease(live_api, worker_id)  # the worker asks again
            assert answer.status_code == 201, answer.text
            assignment = answer.json()
            assert assignment["study_id"] == study["id"]
            if enqueued:
                assert assignment["params"]["lr"] == pytest.approx(0.001 * step)
            _complete(live_api, assignment, 0.1 + step / 100)
            completed.append(assignment["trial_id"])
            if not fired:
                break
        assert step > 5, "the lease path runs more statements than that"
        faults.arm(None)
        while (answer := _lease(live_api, "w-rest")).status_code == 201:
            _complete(live_api, answer.json(), 0.9)
            completed.append(answer.json()["trial_id"])
    assert answer.status_code == 204, answer.text
    assert len(completed) == len(set(completed)) == budget
    assert _states(live_api, study) == {"COMPLETE": budget}  # no FAIL, no RUNNING, no WAITING
    assert _ghosts(live_api) == []
    shown = live_api.as_("alice").get(f"/api/v1/studies/{study['id']}").json()
    assert shown["state"] == "completed"


def test_a_fault_at_any_step_of_a_batch_lease_leaves_no_ghost(
    live_api: LiveApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    faults = Faults(live_api)
    budget = 160  # more than the batch path's statements, two trials a batch
    study = create_study(live_api.as_("alice"), budget={"max_trials": budget})
    completed: list[int] = []

    def batch(worker_id: str):
        return live_api.as_(WORKER).post(
            "/api/v1/leases/batch", json={"worker_id": worker_id, "device": "cpu", "count": 2}
        )

    with faults.installed(monkeypatch, batch=True):
        # Batch k fails at its k-th statement, until a batch runs fewer statements than k.
        for step in itertools.count(1):
            worker_id = f"b-{step}"
            faults.arm(step)
            answer = batch(worker_id)
            fired = faults.fired
            assert answer.status_code in (201, 503), (step, answer.text)
            if answer.status_code == 503:
                assert fired
                assert _ghosts(live_api) == [], f"fault at statement {step}"
                faults.arm(None)
                answer = batch(worker_id)  # the worker asks again
            assert answer.status_code == 201, answer.text
            for assignment in answer.json()["assignments"]:
                _complete(live_api, assignment, 0.1 + step / 100)
                completed.append(assignment["trial_id"])
            if not fired:
                break
        assert step > 5, "the batch path runs more statements than that"
        faults.arm(None)
        while (answer := batch("b-rest")).status_code == 201:
            for assignment in answer.json()["assignments"]:
                _complete(live_api, assignment, 0.9)
                completed.append(assignment["trial_id"])
    assert answer.status_code == 204, answer.text
    assert len(completed) == len(set(completed)) == budget
    assert _states(live_api, study) == {"COMPLETE": budget}
    assert _ghosts(live_api) == []


def test_a_lease_whose_answer_was_lost_is_given_again(
    live_api: LiveApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Committed, then the answer never reached the worker (a 503 after the commit):
    the same worker_id asking again gets that trial, not a second one."""
    study = create_study(live_api.as_("alice"), budget={"max_trials": 1})
    real = lease_routes.leasing.lease_trial
    calls = []

    def lost(*args, **kwargs):
        answer = real(*args, **kwargs)  # committed
        calls.append(1)
        if len(calls) == 1:
            raise DatabaseUnavailable("the answer was lost")
        return answer

    monkeypatch.setattr(lease_routes.leasing, "lease_trial", lost)
    assert _lease(live_api, "w-lost").status_code == 503
    again = _lease(live_api, "w-lost")
    assert again.status_code == 201, again.text
    assert _lease(live_api, "w-other").status_code == 204  # the budget's one trial is held
    _complete(live_api, again.json(), 0.7)
    assert _states(live_api, study) == {"COMPLETE": 1}


def test_a_trial_started_outside_a_lease_is_reaped_after_one_grace_period_without_a_retry(
    live_api: LiveApi,
) -> None:
    """A RUNNING trial with no lease (started by Optuna's own ask, which commits on
    its own) is failed after one grace period and its parameters re-queued with the
    same retry count: no worker ever ran it."""
    study = create_study(live_api.as_("alice"), budget={"max_trials": 2, "max_retries": 1})
    optuna_study = optuna.load_study(
        study_name=study["optuna_study_name"], storage=optuna_storage(live_api)
    )
    ghost = optuna_study.ask(distributions(StudySpec.model_validate(study["spec"])))
    settings = live_api.app.state.settings
    reap = dict(engine=live_api.app.state.engine, storage=live_api.app.state.storage)

    def backdate(seconds: float) -> None:
        with sa.create_engine(live_api.database_url).begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE trials SET datetime_start = datetime_start - make_interval(secs => :s) "
                    "WHERE trial_id = :id"
                ),
                {"s": seconds, "id": ghost._trial_id},
            )

    backdate(settings.grace_period_s / 2)
    assert ghost._trial_id not in reap_stale_leases(settings=settings, **reap)
    backdate(settings.grace_period_s / 2 + 1)
    assert ghost._trial_id in reap_stale_leases(settings=settings, **reap)
    assert _ghosts(live_api) == []
    assert _states(live_api, study) == {"FAIL": 1, "WAITING": 1}
    answer = _lease(live_api, "w-after-ghost")
    assert answer.status_code == 201, answer.text
    assert answer.json()["params"] == ghost.params
    copy = optuna_storage(live_api).get_trial(answer.json()["trial_id"])
    assert copy.user_attrs["retry_of"] == ghost.number
    assert copy.user_attrs["retry_count"] == 0  # a ghost does not spend a retry
    _complete(live_api, answer.json(), 0.3)
    answer = _lease(live_api, "w-after-ghost")
    _complete(live_api, answer.json(), 0.4)
    assert _states(live_api, study) == {"FAIL": 1, "COMPLETE": 2}
    shown = live_api.as_("alice").get(f"/api/v1/studies/{study['id']}").json()
    assert shown["state"] == "completed"
