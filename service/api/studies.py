"""Studies: create, list, show, pause, resume, stop, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from service import quotas, studies
from service.deps import CurrentUser, SessionDep, SettingsDep, StorageDep
from service.schemas import (
    StudiesPublic,
    StudyAction,
    StudyCreate,
    StudyDetail,
    StudyPublic,
    StudyState,
    error_responses,
)
from tunefleet.spec import NAME_PATTERN

router = APIRouter(
    prefix="/api/v1/studies",
    tags=["studies"],
    responses=error_responses(401, 403, 422, 503),
)

StudyId = Annotated[int, Path(ge=1, le=2**31 - 1, description="The study's id.")]
Limit = Annotated[int, Query(ge=1, le=500, description="Page size.")]
Offset = Annotated[int, Query(ge=0, le=2**31 - 1, description="Items skipped.")]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(409, 413, 429),
    summary="Create a study",
)
def create_study(
    spec: StudyCreate,
    user: CurrentUser,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
) -> StudyDetail:
    """Create a study from its spec; it starts running (workers get its trials).

    `imagefolder:`, `file:` and `source_weights` paths must lie under the
    operator's data and model roots (422 otherwise)."""
    quotas.check_new_study(session, principal=user, priority=spec.priority, settings=settings)
    return studies.create_study(session, storage, owner=user.owner, spec=spec, settings=settings)


@router.get("", summary="List studies")
def list_studies(
    user: CurrentUser,
    session: SessionDep,
    state: Annotated[StudyState | None, Query(description="Only studies in this state.")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> StudiesPublic:
    """Your studies (an admin sees everyone's), newest first."""
    return studies.list_studies(session, principal=user, state=state, limit=limit, offset=offset)


@router.get("/by-name/{name}", responses=error_responses(404), summary="Show a study by name")
def show_study_by_name(
    name: Annotated[str, Path(pattern=NAME_PATTERN, description="The study's name.")],
    user: CurrentUser,
    session: SessionDep,
    storage: StorageDep,
    owner: Annotated[
        str | None,
        Query(max_length=64, description="Admins only: whose study (default: your own)."),
    ] = None,
) -> StudyDetail:
    """The study of yours with this name."""
    record = studies.find_study_by_name(session, principal=user, name=name, owner=owner)
    return studies.study_detail(session, storage, record=record)


@router.get("/{study_id}", responses=error_responses(404), summary="Show a study")
def show_study(
    study_id: StudyId, user: CurrentUser, session: SessionDep, storage: StorageDep
) -> StudyDetail:
    """Spec, state, trial counts per state, and the best trial or Pareto front."""
    record = studies.find_study(session, principal=user, study_id=study_id)
    return studies.study_detail(session, storage, record=record)


def _state_route(action: StudyAction, doc: str):
    def change_state(
        study_id: StudyId, user: CurrentUser, session: SessionDep, settings: SettingsDep
    ) -> StudyPublic:
        if action == "resume":
            record = studies.find_study(session, principal=user, study_id=study_id)
            quotas.check_resume(session, record=record, settings=settings)
        return studies.change_study_state(session, principal=user, study_id=study_id, action=action)

    change_state.__doc__ = doc
    change_state.__name__ = f"{action}_study"
    router.post(
        f"/{{study_id}}/{action}",
        responses=error_responses(404, 409, *((429,) if action == "resume" else ())),
        summary=f"{action.capitalize()} a study",
    )(change_state)


_state_route("pause", "Stop handing out its trials; running ones are told to stop.")
_state_route("resume", "Hand out its trials again.")
_state_route("stop", "End the study for good; its trials and results stay.")


@router.delete(
    "/{study_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404),
    summary="Delete a study",
)
def delete_study(
    study_id: StudyId, user: CurrentUser, session: SessionDep, storage: StorageDep
) -> Response:
    """Delete the study, its leases, and its Optuna study with every trial."""
    studies.delete_study(session, storage, principal=user, study_id=study_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
