"""Trials of a study: list, show, enqueue."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, status

from service import quotas, studies, trials
from service.api.studies import Limit, Offset, StudyId
from service.deps import CurrentUser, SessionDep, SettingsDep, StorageDep
from service.schemas import (
    TrialDetail,
    TrialEnqueue,
    TrialsPublic,
    TrialStateName,
    error_responses,
)

router = APIRouter(
    prefix="/api/v1/studies/{study_id}/trials",
    tags=["trials"],
    responses=error_responses(401, 403, 404, 422, 503),
)


@router.get("", summary="List a study's trials")
def list_trials(
    study_id: StudyId,
    user: CurrentUser,
    session: SessionDep,
    storage: StorageDep,
    state: Annotated[
        list[TrialStateName] | None,
        Query(max_length=5, description="Only trials in these states (repeat to give several)."),
    ] = None,
    order_by: Annotated[
        str | None,
        Query(
            max_length=64,
            description="number (default) or one of the study's metrics, best first.",
        ),
    ] = None,
    order: Annotated[
        Literal["asc", "desc"] | None,
        Query(description="Override the direction of order_by."),
    ] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> TrialsPublic:
    """A page of trials: parameters, values, state, timings and the worker running it."""
    record = studies.find_study(session, principal=user, study_id=study_id)
    return trials.list_trials(
        session,
        storage,
        record=record,
        states=state,
        order_by=order_by,
        order=order,
        limit=limit,
        offset=offset,
    )


@router.get("/{number}", summary="Show a trial")
def show_trial(
    study_id: StudyId,
    number: Annotated[int, Path(ge=0, le=2**31 - 1, description="Trial number in the study.")],
    user: CurrentUser,
    session: SessionDep,
    storage: StorageDep,
) -> TrialDetail:
    """One trial in full: intermediate values, user attributes, artifact location."""
    record = studies.find_study(session, principal=user, study_id=study_id)
    return trials.show_trial(session, storage, record=record, number=number, as_admin=user.is_admin)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(409, 413, 429),
    summary="Enqueue a trial",
)
def enqueue_trial(
    study_id: StudyId,
    body: TrialEnqueue,
    user: CurrentUser,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
) -> TrialDetail:
    """Queue a trial with fixed parameters, within the study's remaining budget; the next
    lease runs it before sampled ones."""
    record = studies.find_study(session, principal=user, study_id=study_id)
    quotas.check_enqueue(session, storage, record=record, settings=settings)
    return trials.enqueue_trial(session, storage, record=record, params=body.params)
