"""The reaper on SQLite, the demo's database: one writer at a time.

Failing a trial is Optuna's write, through Optuna's own engine; the lease's
new state is ours. With several stale leases in one pass, a transaction of
ours that has written a lease must not be open while Optuna writes the next
trial, or SQLite's single writer makes the pass wait out its busy timeout and
fail, pass after pass, and those trials are never re-queued.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service.config import Settings
from service.db import make_engine
from service.leasing import lease_trial
from service.main import make_storage
from service.migrate import migrate
from service.models import Lease, utcnow
from service.reaper import reap_stale_leases
from service.studies import create_study
from tunefleet.spec import StudySpec


def make_spec(name: str, **budget: int) -> StudySpec:
    return StudySpec.model_validate(
        {
            "name": name,
            "source_model": "builtin:digits-cnn",
            "dataset": "builtin:digits-5to9",
            "objectives": [{"metric": "accuracy"}],
            "search_space": {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}},
            "budget": {"max_trials": 10, "max_retries": 2, **budget},
        }
    )


def test_one_pass_reaps_stale_and_overdue_leases_of_several_studies_on_sqlite(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'tunefleet.db'}"
    migrate(url)
    settings = Settings(database_url=url, data_dir=tmp_path, grace_period_s=30)
    engine = make_engine(url)
    storage = make_storage(settings)
    with Session(engine) as session:
        create_study(session, storage, owner="alice", spec=make_spec("first"))
        create_study(session, storage, owner="alice", spec=make_spec("second", trial_timeout_s=60))
    leases = {}
    for worker in ("w1", "w2", "w3", "w4"):  # fair share: two trials of each study
        with Session(engine) as session:
            assignment = lease_trial(
                session, storage=storage, settings=settings, worker_id=worker, device="cpu"
            )
            leases[worker] = assignment.trial_id
    now = utcnow()
    with engine.begin() as conn:
        # Three workers went silent an hour ago; w4 still heartbeats, but its
        # trial has run for two hours, past its study's trial_timeout_s.
        conn.execute(
            sa.update(Lease)
            .where(Lease.worker_id != "w4")
            .values(expires_at=now - timedelta(hours=1))
        )
        conn.execute(
            sa.update(Lease)
            .where(Lease.worker_id == "w4")
            .values(leased_at=now - timedelta(hours=2), expires_at=now + timedelta(minutes=1))
        )
    with Session(engine) as session:
        studies = dict(session.execute(sa.select(Lease.worker_id, Lease.study_id)).all())
    assert len(set(studies.values())) == 2 and studies["w4"] != studies["w1"]
    silent = [leases[w] for w in ("w1", "w2", "w3")]

    reaped = reap_stale_leases(engine=engine, storage=storage, settings=settings)

    assert sorted(reaped) == sorted(leases.values())
    with Session(engine) as session:
        rows = session.execute(sa.select(Lease.trial_id, Lease.state, Lease.outcome)).all()
    outcome = {trial_id: (state, out) for trial_id, state, out in rows}
    assert all(outcome[t][0] == "expired" for t in leases.values())
    assert "timed out" in outcome[leases["w4"]][1]["reason"]
    assert "retry_trial_id" not in outcome[leases["w4"]][1]
    retries = [outcome[t][1]["retry_trial_id"] for t in silent]
    # Each silent worker's trial failed and came back once, WAITING, with its parameters.
    for trial_id, retry_id in zip(silent, retries, strict=True):
        failed, retry = storage.get_trial(trial_id), storage.get_trial(retry_id)
        assert failed.state.name == "FAIL" and retry.state.name == "WAITING"
        assert retry.user_attrs["retry_of"] == failed.number
        assert retry.system_attrs["fixed_params"] == failed.params
    assert storage.get_trial(leases["w4"]).state.name == "FAIL"
    # A second pass finds nothing left to do.
    assert reap_stale_leases(engine=engine, storage=storage, settings=settings) == []
    storage.engine.dispose()
    engine.dispose()
