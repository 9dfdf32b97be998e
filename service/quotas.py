"""What one owner may ask of a shared fleet: priority cap and per-owner limits.

- a priority above TUNEFLEET_MAX_USER_PRIORITY needs an admin token (403);
- running studies per owner (TUNEFLEET_MAX_RUNNING_STUDIES_PER_OWNER), checked when
  a study is created or resumed, and WAITING trials per owner
  (TUNEFLEET_MAX_WAITING_TRIALS_PER_OWNER), checked on enqueue: 429 naming the limit;
- running trials per owner (TUNEFLEET_MAX_RUNNING_TRIALS_PER_OWNER) are held back
  at lease time (service/fair_share.py): the owner's studies wait their turn;
- an enqueue beyond the study's remaining budget is a 409.
"""

from __future__ import annotations

import sqlalchemy as sa
from optuna.storages import BaseStorage
from optuna.trial import TrialState
from sqlalchemy.orm import Session

from service.auth import Principal
from service.budget import study_budget
from service.config import Settings
from service.errors import Conflict, Forbidden, TooManyRequests
from service.models import StudyRecord, StudyState

__all__ = ["check_enqueue", "check_new_study", "check_resume"]


def check_new_study(
    session: Session, *, principal: Principal, priority: int, settings: Settings
) -> None:
    """Before a study is created: its priority, and the owner's running studies."""
    if priority > settings.max_user_priority and not principal.is_admin:
        raise Forbidden(
            f"priority {priority} is above {settings.max_user_priority}, the highest a user "
            "token may set (TUNEFLEET_MAX_USER_PRIORITY): lower it or ask an admin",
            path=["priority"],
        )
    _check_running_studies(session, owner=principal.owner, settings=settings)


def check_resume(session: Session, *, record: StudyRecord, settings: Settings) -> None:
    """Before a paused study runs again: the owner's running studies."""
    if record.state == StudyState.PAUSED:
        _check_running_studies(session, owner=record.owner, settings=settings)


def _check_running_studies(session: Session, *, owner: str, settings: Settings) -> None:
    running = session.scalar(
        sa.select(sa.func.count(StudyRecord.id)).where(
            StudyRecord.owner == owner, StudyRecord.state == StudyState.RUNNING
        )
    )
    limit = settings.max_running_studies_per_owner
    if (running or 0) >= limit:
        raise TooManyRequests(
            f"{owner} has {running} running studies, the limit "
            f"(TUNEFLEET_MAX_RUNNING_STUDIES_PER_OWNER={limit}): pause or stop one first"
        )


def check_enqueue(
    session: Session, storage: BaseStorage, *, record: StudyRecord, settings: Settings
) -> None:
    """Before a trial is enqueued: the study's remaining budget and the owner's WAITING trials."""
    assert record.optuna_study_id is not None
    max_trials = study_budget(record).max_trials
    counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    try:
        trials = storage.get_all_trials(record.optuna_study_id, deepcopy=False, states=counted)
    except KeyError:  # its Optuna study was deleted elsewhere: the enqueue says so (404)
        return
    used = len(trials)
    if used >= max_trials:
        raise Conflict(
            f"the study's budget is taken: max_trials {max_trials}, and {used} trials are "
            "finished, running or waiting; no trial can be enqueued beyond it"
        )
    waiting = session.execute(
        sa.text(
            "SELECT count(*) FROM trials t "
            "JOIN studies os ON os.study_id = t.study_id "
            "JOIN tf_studies s ON s.optuna_study_name = os.study_name "
            "WHERE t.state = 'WAITING' AND s.owner = :owner"
        ),
        {"owner": record.owner},
    ).scalar_one()
    limit = settings.max_waiting_trials_per_owner
    if waiting >= limit:
        raise TooManyRequests(
            f"{record.owner} has {waiting} waiting trials, the limit "
            f"(TUNEFLEET_MAX_WAITING_TRIALS_PER_OWNER={limit}): let some run first"
        )
