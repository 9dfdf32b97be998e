"""The worker protocol: what a worker sends to the service and what it gets back.

Both sides import these models; the workers never import ``service/``. Every
call after the lease names the trial by ``trial_id`` in the path and carries
the assignment's ``lease_secret`` in the ``X-Lease-Secret`` header: without it
(or with another one) the call is 404, as if the trial had no lease.

    POST /api/v1/leases                         LeaseRequest    -> 201 Assignment | 204
    POST /api/v1/leases/batch                   BatchLeaseRequest -> 201 BatchAssignment | 204
    POST /api/v1/trials/{trial_id}/heartbeat    Heartbeat       -> HeartbeatAck
    POST /api/v1/trials/{trial_id}/intermediate IntermediateReport -> PruneDecision
    POST /api/v1/trials/{trial_id}/complete     TrialCompletion -> TrialOutcome
    POST /api/v1/trials/{trial_id}/fail         TrialFailure    -> TrialOutcome
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tunefleet.spec import StudySpec

__all__ = [
    "API_PREFIX",
    "DATASET_FINGERPRINT_ATTR",
    "LEASE_SECRET_HEADER",
    "MAX_BATCH_LEASE",
    "WORKER_INTERRUPTED",
    "Assignment",
    "BatchAssignment",
    "BatchLeaseRequest",
    "Heartbeat",
    "HeartbeatAck",
    "IntermediateReport",
    "LeaseRequest",
    "Progress",
    "PruneDecision",
    "TrialCompletion",
    "TrialFailure",
    "TrialOutcome",
]

API_PREFIX = "/api/v1"
# The header every call on a leased trial carries: the assignment's lease_secret.
LEASE_SECRET_HEADER = "X-Lease-Secret"
# The attribute of a completion that carries the sha256 of the dataset's content (every
# split's images and labels); warm_start: auto matches past studies by it.
DATASET_FINGERPRINT_ATTR = "dataset_fingerprint"

# The reason a worker gives when it lets go of a trial it did not finish
# (second signal, or the service told it to stop); the service re-queues it.
WORKER_INTERRUPTED = "worker interrupted"

# The most trials one batched lease (POST /api/v1/leases/batch) hands out.
MAX_BATCH_LEASE = 64

_ID = Field(
    min_length=1,
    max_length=200,
    pattern=r"^[A-Za-z0-9._:@/+-]+$",
    description="The worker's own id (host and device, say); asking again with it gives "
    "back the trial it holds.",
)


class _Message(BaseModel):
    """A request body: unknown fields and NUL characters (which no database text column
    can hold) are refused with the field's path."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if _holds_nul(value):
            raise ValueError("must not contain NUL characters (\\x00)")
        return value


def _holds_nul(value: Any) -> bool:
    """Whether a string in `value` (nested to any depth: a loop, not recursion, since
    attrs nested too deep are refused later, with their path) holds a NUL."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            pending.extend(item)
        elif isinstance(item, BaseModel):
            pending.extend(item.__dict__.values())
    return False


class LeaseRequest(_Message):
    """Give me a trial of any running study."""

    worker_id: str = _ID
    device: str = Field(
        default="cpu", min_length=1, max_length=64, description="Where it runs: cpu, cuda:0, ..."
    )
    warm_backbones: list[Annotated[str, Field(max_length=300)]] = Field(
        default_factory=list,
        max_length=64,
        description="Source models the worker holds loaded, most recent first; the service "
        "prefers, within the fair share, studies that use them.",
    )


class BatchLeaseRequest(LeaseRequest):
    """Give me up to `count` trials of one running study, each with its own lease."""

    count: int = Field(
        default=1,
        ge=1,
        le=MAX_BATCH_LEASE,
        description=f"How many trials at most (1-{MAX_BATCH_LEASE}); all of one study.",
    )


class Assignment(BaseModel):
    """A leased trial: what to train, with which parameters, until when."""

    trial_id: int = Field(description="Optuna's trial id; the trial calls take it.")
    study_id: int = Field(description="TuneFleet's study id, as the user API shows it.")
    number: int = Field(description="The trial's number within its study.")
    params: dict[str, Any] = Field(description="The sampled values, by hyperparameter name.")
    spec: StudySpec = Field(
        description="The study spec the trial belongs to; the worker validates it with the "
        "same model the API used, so both sides read the same defaults and bounds."
    )
    owner: str | None = Field(
        default=None,
        description="The study's owner: a worker resolves `{owner}` in its data and model "
        "roots with it.",
    )
    lease_expires_at: datetime
    heartbeat_interval_s: float = Field(
        default=10.0, description="How often the service expects a heartbeat."
    )
    lease_secret: str = Field(
        default="",
        description="Proof of holding this lease: send it in the X-Lease-Secret header of "
        "every call on the trial. Asking again with the same worker_id and token gets a new one.",
    )


class BatchAssignment(BaseModel):
    """Trials of one study leased together; every later call stays per trial."""

    assignments: list[Assignment] = Field(
        description="One to `count` trials of the same study, each with its own lease secret."
    )


class Progress(_Message):
    epoch: int = Field(ge=0)
    total_epochs: int | None = Field(default=None, ge=0)


class Heartbeat(_Message):
    """I am alive; extends the lease. May say how far the trial got."""

    progress: Progress | None = None


class HeartbeatAck(BaseModel):
    stop: bool = Field(
        description="Abandon the trial: the study was paused or stopped, or the lease is gone."
    )
    reason: str | None = Field(default=None, description="Why stop, when stop is true.")
    lease_expires_at: datetime | None = None


class IntermediateReport(_Message):
    step: int = Field(ge=0, le=1_000_000)
    value: float


class PruneDecision(BaseModel):
    prune: bool = Field(
        description="Stop the trial: the pruner stopped it (now PRUNED), or the value was "
        "not finite and failed it (then `reason` says so); it needs no complete."
    )
    reason: str | None = Field(default=None, description="Why the trial failed, when it did.")


class TrialCompletion(_Message):
    """The final values, one per objective of the spec, by metric name."""

    values: dict[str, float] = Field(min_length=1, max_length=3)
    attrs: dict[str, Any] = Field(default_factory=dict, max_length=200)
    artifact: str | None = Field(default=None, max_length=2048)


class TrialFailure(_Message):
    reason: str = Field(
        min_length=1,
        max_length=2000,
        description="What the study's owner sees: a short code and a message that names only "
        "what the spec says.",
    )
    detail: str | None = Field(
        default=None,
        max_length=8000,
        description="The full story (paths and names found on the worker); shown to admins only.",
    )
    requeue: bool | None = Field(
        default=None,
        description="Run these parameters again (within the spec's max_retries). "
        f"Unset: only when the reason is {WORKER_INTERRUPTED!r}.",
    )

    def wants_requeue(self) -> bool:
        if self.requeue is not None:
            return self.requeue
        return self.reason == WORKER_INTERRUPTED


class TrialOutcome(BaseModel):
    """Where a trial ended up after complete or fail."""

    trial_id: int
    number: int
    state: Literal["complete", "fail", "pruned", "running", "waiting"] = Field(
        description="The trial's state, in lowercase as everywhere in the API."
    )
    values: dict[str, float] | None = None
    reason: str | None = None
    retry_trial_id: int | None = Field(
        default=None, description="The waiting trial that re-runs these parameters, if any."
    )

    @field_validator("state", mode="before")
    @classmethod
    def _lowercase(cls, state: object) -> object:
        # Optuna's state names (and answers kept on leases) are in capitals.
        return state.lower() if isinstance(state, str) else state
