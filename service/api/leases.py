"""The worker protocol: lease a trial, heartbeat, report, complete, fail."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Response, status

from service import batch_leasing, leasing
from service.deps import CurrentWorker, SessionDep, SettingsDep, StorageDep
from service.schemas import error_responses
from tunefleet.protocol import (
    API_PREFIX,
    Assignment,
    BatchAssignment,
    BatchLeaseRequest,
    Heartbeat,
    HeartbeatAck,
    IntermediateReport,
    LeaseRequest,
    PruneDecision,
    TrialCompletion,
    TrialFailure,
    TrialOutcome,
)

router = APIRouter(
    prefix=API_PREFIX, tags=["workers"], responses=error_responses(401, 403, 422, 503)
)
# A trial call for a trial without a lease (never leased, or another trial id), or
# without the lease's secret and token, is 404; one whose lease has ended
# differently (reaped, finished otherwise) is 409.
TRIAL_CALL_ERRORS = error_responses(404, 409)

LeaseSecret = Annotated[
    str | None,
    Header(
        alias="X-Lease-Secret",
        max_length=256,
        description="The assignment's lease_secret; without it (or another one) the call is 404.",
    ),
]

# Optuna's trial ids are 32-bit integers in PostgreSQL: a larger one is a 422, not a 500.
TrialId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Optuna's trial id.")]


@router.post(
    "/leases",
    status_code=status.HTTP_201_CREATED,
    response_model=Assignment,
    responses={204: {"description": "No running study has work right now."}},
)
def create_lease(
    body: LeaseRequest,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    worker: CurrentWorker,
) -> Assignment | Response:
    """Lease a trial of a running study (fair share between owners, then by priority),
    or 204 when there is none."""
    assignment = leasing.lease_trial(
        session,
        storage=storage,
        settings=settings,
        worker_id=body.worker_id,
        device=body.device,
        holder=worker,
        warm_backbones=body.warm_backbones,
    )
    if assignment is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return assignment


@router.post(
    "/leases/batch",
    status_code=status.HTTP_201_CREATED,
    response_model=BatchAssignment,
    responses={204: {"description": "No running study has work right now."}},
)
def create_leases(
    body: BatchLeaseRequest,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    worker: CurrentWorker,
) -> BatchAssignment | Response:
    """Lease up to `count` trials of one running study (the one whose turn it is),
    sampled together, each with its own lease; or 204 when there is none."""
    assignments = batch_leasing.lease_trials(
        session,
        storage=storage,
        settings=settings,
        worker_id=body.worker_id,
        device=body.device,
        count=body.count,
        holder=worker,
        warm_backbones=body.warm_backbones,
    )
    if not assignments:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return BatchAssignment(assignments=assignments)


@router.post(
    "/trials/{trial_id}/heartbeat", response_model=HeartbeatAck, responses=TRIAL_CALL_ERRORS
)
def heartbeat(
    trial_id: TrialId,
    body: Heartbeat,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    worker: CurrentWorker,
    secret: LeaseSecret = None,
) -> HeartbeatAck:
    """Extend the lease; the answer says stop when the study was paused or stopped."""
    return leasing.heartbeat(
        session,
        storage=storage,
        settings=settings,
        trial_id=trial_id,
        progress=body.progress,
        caller=(worker, secret),
    )


@router.post(
    "/trials/{trial_id}/intermediate",
    response_model=PruneDecision,
    response_model_exclude_none=True,
    responses=TRIAL_CALL_ERRORS,
)
def intermediate(
    trial_id: TrialId,
    body: IntermediateReport,
    session: SessionDep,
    storage: StorageDep,
    worker: CurrentWorker,
    secret: LeaseSecret = None,
) -> PruneDecision:
    """Record a validation value; the answer says whether the trial must stop (pruned,
    or failed for a value that is not finite)."""
    return leasing.report_intermediate(
        session,
        storage=storage,
        trial_id=trial_id,
        step=body.step,
        value=body.value,
        caller=(worker, secret),
    )


@router.post(
    "/trials/{trial_id}/complete",
    response_model=TrialOutcome,
    responses={**TRIAL_CALL_ERRORS, **error_responses(413)},
)
def complete(
    trial_id: TrialId,
    body: TrialCompletion,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    worker: CurrentWorker,
    secret: LeaseSecret = None,
) -> TrialOutcome:
    """Hand in one value per objective; the same call again gets the same answer."""
    return leasing.complete_trial(
        session,
        storage=storage,
        trial_id=trial_id,
        completion=body,
        settings=settings,
        caller=(worker, secret),
    )


@router.post("/trials/{trial_id}/fail", response_model=TrialOutcome, responses=TRIAL_CALL_ERRORS)
def fail(
    trial_id: TrialId,
    body: TrialFailure,
    session: SessionDep,
    storage: StorageDep,
    worker: CurrentWorker,
    secret: LeaseSecret = None,
) -> TrialOutcome:
    """Fail the trial with a reason; 'worker interrupted' (or requeue) re-queues it."""
    return leasing.fail_trial(
        session, storage=storage, trial_id=trial_id, failure=body, caller=(worker, secret)
    )
