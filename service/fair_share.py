"""Which study's trial a lease gets: fair share between owners first, then between
an owner's studies by priority.

A load is running trials plus the trials handed out in the last minute: with
long trials the running ones decide, with short ones (many leases a minute) the
rate does. The owner with the least load goes first, whatever the priorities
and number of their studies, so two owners share the fleet evenly; among one
owner's studies, the one with the least load per unit of weight
(``priority + 1``) goes first, so their studies of priority 3 and 0 share that
owner's part about 4:1.

An owner at their limit of running trials (TUNEFLEET_MAX_RUNNING_TRIALS_PER_OWNER)
waits until one ends. A worker token bound to an owner (a private fleet) sees
only that owner's studies; the studies of owners with a private fleet
(TUNEFLEET_PRIVATE_OWNERS) are never handed to other workers.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import TypeVar

import sqlalchemy as sa
from optuna.storages import BaseStorage
from sqlalchemy.orm import Session

from service.auth import Principal
from service.config import Settings
from service.lease_rows import LeasedMeanwhile
from service.models import Lease, LeaseState, StudyRecord, StudyState, utcnow
from service.study_cache import LoadedStudy, study_of
from tunefleet.spec import spec_backbones

T = TypeVar("T")

__all__ = [
    "FAIR_SHARE_WINDOW_S",
    "first_lease_in_turn",
    "loaded_studies_in_turn",
    "running_trials_by_owner",
    "studies_in_turn",
]

log = logging.getLogger(__name__)

# How far back the leases handed out count towards a share.
FAIR_SHARE_WINDOW_S = 60.0


def running_trials_by_owner(session: Session, owners: list[str] | None = None) -> dict[str, int]:
    """Active leases per owner, over studies in any state."""
    query = (
        sa.select(StudyRecord.owner, sa.func.count(Lease.trial_id))
        .join(Lease, Lease.study_id == StudyRecord.id)
        .where(Lease.state == LeaseState.ACTIVE)
        .group_by(StudyRecord.owner)
    )
    if owners is not None:
        query = query.where(StudyRecord.owner.in_(owners))
    return dict(session.execute(query).all())  # type: ignore[arg-type]


def studies_in_turn(
    session: Session,
    *,
    settings: Settings,
    holder: Principal | None = None,
    warm: frozenset[str] = frozenset(),
) -> list[StudyRecord]:
    """Running studies this holder may lease, in the order they should be tried.

    Among one owner's studies, a study whose source model (or one of its searched
    ones) the worker holds loaded (`warm`) counts half a lease less: it goes first
    among studies at the same load, never before one further below its share, and
    the sampler is never steered (no parameter is re-drawn)."""
    since = utcnow() - timedelta(seconds=FAIR_SHARE_WINDOW_S)
    active = sa.func.count(Lease.trial_id).filter(Lease.state == LeaseState.ACTIVE)
    recent = sa.func.count(Lease.trial_id).filter(Lease.leased_at > since)
    query = (
        sa.select(StudyRecord, active, recent)
        .outerjoin(Lease, Lease.study_id == StudyRecord.id)
        # A study whose Optuna study is still being created has no trials to give.
        .where(StudyRecord.state == StudyState.RUNNING, StudyRecord.optuna_study_id.is_not(None))
        .group_by(StudyRecord.id)
    )
    if holder is not None and holder.studies_of is not None:
        query = query.where(StudyRecord.owner == holder.studies_of)
    elif settings.private_owners:
        query = query.where(StudyRecord.owner.not_in(settings.private_owners))
    rows = session.execute(query).all()

    by_owner: dict[str, list[tuple[StudyRecord, int, int]]] = defaultdict(list)
    for record, running, handed_out in rows:
        by_owner[record.owner].append((record, running, handed_out))
    running_now = running_trials_by_owner(session, list(by_owner))

    def owner_turn(owner: str) -> tuple[int, int, str]:
        studies = by_owner[owner]
        load = sum(running + handed_out for _, running, handed_out in studies)
        return (load, running_now.get(owner, 0), owner)

    def study_turn(row: tuple[StudyRecord, int, int]) -> tuple[float, float, int]:
        record, running, handed_out = row
        weight = max(record.priority, 0) + 1
        load = running + handed_out - (0.5 if _uses_warm_backbone(record, warm) else 0.0)
        return (load / weight, running / weight, record.id)

    order: list[StudyRecord] = []
    for owner in sorted(by_owner, key=owner_turn):
        if running_now.get(owner, 0) >= settings.max_running_trials_per_owner:
            continue
        order += [row[0] for row in sorted(by_owner[owner], key=study_turn)]
    return order


def _uses_warm_backbone(record: StudyRecord, warm: frozenset[str]) -> bool:
    """Whether the study's source model (or one of its searched ones) is in `warm`."""
    return bool(warm) and not warm.isdisjoint(spec_backbones(record.spec or {}))


def loaded_studies_in_turn(
    session: Session,
    storage: BaseStorage,
    *,
    settings: Settings,
    holder: Principal | None,
    warm: frozenset[str],
) -> Iterator[tuple[StudyRecord, LoadedStudy]]:
    """`studies_in_turn` with each study's loaded Optuna study, for the lease paths;
    a study whose Optuna study was deleted behind TuneFleet's back is skipped."""
    for record in studies_in_turn(session, settings=settings, holder=holder, warm=warm):
        try:
            entry = study_of(storage, record)
        except KeyError:
            log.warning("study %s has no Optuna study %r", record.id, record.optuna_study_name)
            continue
        yield record, entry


def first_lease_in_turn(
    session: Session,
    storage: BaseStorage,
    *,
    settings: Settings,
    holder: Principal | None,
    warm: frozenset[str],
    held_again: Callable[[], T | None],
    lease_from: Callable[[int, LoadedStudy], T | None],
) -> T | None:
    """The lease paths' shape: what the worker already holds (`held_again`), else what
    the first study in turn hands out (`lease_from(study_id, entry)`); None when nothing.
    A hand-out that finds a lease a retry of the same worker committed meanwhile rolls
    back and looks again, so that the answer is that lease."""
    while True:
        held = held_again()
        if held:
            return held
        try:
            for record, entry in loaded_studies_in_turn(
                session, storage, settings=settings, holder=holder, warm=warm
            ):
                got = lease_from(record.id, entry)
                if got:
                    return got
            return None
        except LeasedMeanwhile:
            session.rollback()
