"""The worker protocol: lease a trial, heartbeat, report, complete, fail."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import optuna
from fastapi import APIRouter, Depends, Request, Response, status
from sqlalchemy.engine import Engine

from service import leasing
from service.config import Settings
from service.deps import CurrentWorker
from service.scheduling import lease_trial
from tunefleet.protocol import (
    API_PREFIX,
    Assignment,
    Heartbeat,
    HeartbeatAck,
    IntermediateReport,
    LeaseRequest,
    PruneDecision,
    TrialCompletion,
    TrialFailure,
    TrialOutcome,
)

router = APIRouter(prefix=API_PREFIX, tags=["workers"])


@dataclass(frozen=True)
class Fleet:
    engine: Engine
    storage: optuna.storages.BaseStorage
    settings: Settings


def get_fleet(request: Request) -> Fleet:
    state = request.app.state
    return Fleet(engine=state.engine, storage=state.storage, settings=state.settings)


FleetDep = Annotated[Fleet, Depends(get_fleet)]


@router.post(
    "/leases",
    status_code=status.HTTP_201_CREATED,
    response_model=Assignment,
    responses={204: {"description": "No running study has work right now."}},
)
def create_lease(
    body: LeaseRequest, fleet: FleetDep, _worker: CurrentWorker
) -> Assignment | Response:
    """Lease a trial of a running study (fair share by priority), or 204 when there is none."""
    assignment = lease_trial(
        engine=fleet.engine,
        storage=fleet.storage,
        settings=fleet.settings,
        worker_id=body.worker_id,
        device=body.device,
    )
    if assignment is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return assignment


@router.post("/trials/{trial_id}/heartbeat", response_model=HeartbeatAck)
def heartbeat(
    trial_id: int, body: Heartbeat, fleet: FleetDep, _worker: CurrentWorker
) -> HeartbeatAck:
    """Extend the lease; the answer says stop when the study was paused or stopped."""
    return leasing.heartbeat(
        engine=fleet.engine,
        storage=fleet.storage,
        settings=fleet.settings,
        trial_id=trial_id,
        progress=body.progress,
    )


@router.post("/trials/{trial_id}/intermediate", response_model=PruneDecision)
def intermediate(
    trial_id: int, body: IntermediateReport, fleet: FleetDep, _worker: CurrentWorker
) -> PruneDecision:
    """Record a validation value; the answer says whether the pruner stopped the trial."""
    prune = leasing.report_intermediate(
        engine=fleet.engine,
        storage=fleet.storage,
        trial_id=trial_id,
        step=body.step,
        value=body.value,
    )
    return PruneDecision(prune=prune)


@router.post("/trials/{trial_id}/complete", response_model=TrialOutcome)
def complete(
    trial_id: int, body: TrialCompletion, fleet: FleetDep, _worker: CurrentWorker
) -> TrialOutcome:
    """Hand in one value per objective; the same call again gets the same answer."""
    return leasing.complete_trial(
        engine=fleet.engine, storage=fleet.storage, trial_id=trial_id, completion=body
    )


@router.post("/trials/{trial_id}/fail", response_model=TrialOutcome)
def fail(
    trial_id: int, body: TrialFailure, fleet: FleetDep, _worker: CurrentWorker
) -> TrialOutcome:
    """Fail the trial with a reason; 'worker interrupted' (or requeue) re-queues it."""
    return leasing.fail_trial(
        engine=fleet.engine, storage=fleet.storage, trial_id=trial_id, failure=body
    )
