"""Request and response bodies of the user API, named by role."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.models import LeaseState, StudyState
from tunefleet.spec import ParamValue, StudySpec

TrialStateName = Literal["running", "waiting", "complete", "pruned", "fail"]
StudyAction = Literal["pause", "resume", "stop"]

StudyCreate = StudySpec
"""Creating a study takes its spec; `name` in the spec names the study."""


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ObjectivePublic(_Out):
    """One objective of a study."""

    metric: str = Field(description="Metric name, as the trial reports it.")
    direction: Literal["maximize", "minimize"] = Field(description="Optimization direction.")


class LeasePublic(_Out):
    """The worker running a trial, and its last report of progress."""

    worker_id: str = Field(description="Worker that holds (or held) the trial.")
    device: str = Field(description="Device it runs on, e.g. cuda:0.")
    state: LeaseState = Field(description="active, completed, pruned, failed, released or expired.")
    heartbeat_at: datetime = Field(description="Last heartbeat.")
    expires_at: datetime = Field(description="The lease is reaped after this without heartbeat.")
    progress: dict[str, Any] | None = Field(None, description="Last progress the worker sent.")


class TrialPublic(_Out):
    """A trial as listed: state, parameters, values, timings."""

    trial_id: int = Field(description="Optuna's trial id (what the worker protocol uses).")
    number: int = Field(description="Number of the trial within its study, from 0.")
    state: TrialStateName = Field(description="running, waiting, complete, pruned or fail.")
    params: dict[str, ParamValue] = Field(
        description="Sampled parameters; for a waiting trial, those it was enqueued with."
    )
    values: dict[str, float | None] | None = Field(
        description="Objective values by metric once complete (null for a non-finite value).",
        examples=[{"accuracy": 0.93, "robustness": 0.71}],
    )
    datetime_start: datetime | None = Field(description="When a worker started it.")
    datetime_complete: datetime | None = Field(description="When it finished.")
    duration_s: float | None = Field(description="Run time in seconds, once finished.")
    last_step: int | None = Field(description="Last epoch with an intermediate value.")
    artifact: str | None = Field(description="Where the best checkpoint is kept.")
    lease: LeasePublic | None = Field(None, description="The worker holding it, if leased.")
    warm_start_from: str | None = Field(
        None,
        description="For a trial the study's warm start enqueued: the past trial it repeats, "
        "as study/number.",
        examples=["digits-shifted-s1/17"],
    )


class TrialDetail(TrialPublic):
    """One trial in full: also every intermediate value and user attribute."""

    intermediate_values: dict[int, float | None] = Field(
        description="Validation accuracy by epoch, as reported to the pruner."
    )
    user_attrs: dict[str, Any] = Field(
        description="What the worker recorded: robustness components, timings, artifact, ..."
    )
    fail_reason: str | None = Field(None, description="Why a failed trial failed.")
    fail_detail: str | None = Field(
        None,
        description="Admins only: the worker's full account of the failure, with the paths "
        "and names it found. Always null for other users.",
    )


class TrialsPublic(BaseModel):
    """A page of trials and how many match the filter in all."""

    data: list[TrialPublic] = Field(description="This page of trials.")
    count: int = Field(description="Trials matching the filter, over every page.")


class TrialEnqueue(BaseModel):
    """Queue a trial with fixed parameters; the sampler fills those left out."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"params": {"lr": 0.01, "activation": "gelu"}}]},
    )

    params: dict[str, ParamValue] = Field(
        max_length=64,
        description="Values for parameters of the study's search space (a subset is fine).",
    )


class StudyPublic(_Out):
    """A study as listed."""

    id: int = Field(description="TuneFleet's study id; the API addresses studies by it.")
    name: str = Field(description="Name, unique among the owner's studies.")
    owner: str = Field(description="Who created it.")
    state: StudyState = Field(
        description="running, paused, stopped, completed or failed (too many trials "
        "failed: see fail_reason; resume tries again)."
    )
    failed_trials: int = Field(
        0, description="Trials that failed for good since the study (re)started."
    )
    fail_reason: str | None = Field(
        None, description="Why a failed study failed: the last trial's failure."
    )
    priority: int = Field(description="0..100; higher gets a larger share of the workers.")
    objectives: list[ObjectivePublic] = Field(description="Metrics and directions.")
    optuna_study_name: str = Field(description="The study's name in Optuna and its dashboard.")
    created_at: datetime = Field(description="Creation time.")
    updated_at: datetime = Field(description="Last change of state.")


class WarmStartPublic(BaseModel):
    """What a study's sampler observes of past studies (warm_start.observe)."""

    observations: int = Field(
        description="Past completed trials the sampler reads besides this study's own, "
        "counted at creation.",
        examples=[120],
    )
    sources: list[str] = Field(
        description="The past studies they come from, as resolved at creation (auto included).",
        examples=[["digits-shifted-s1"]],
    )


class StudyDetail(StudyPublic):
    """A study in full: its spec, trial counts per state and its best trials."""

    spec: StudySpec = Field(description="The spec it was created with (defaults filled in).")
    trial_counts: dict[str, int] = Field(
        description="Trials per state: running, waiting, complete, pruned, fail.",
        examples=[{"running": 2, "waiting": 0, "complete": 17, "pruned": 5, "fail": 1}],
    )
    best_trials: list[TrialPublic] = Field(
        description="The best trial (one objective) or the Pareto front (several); "
        "empty until a trial completes."
    )
    warm_start: WarmStartPublic | None = Field(
        None,
        description="With warm_start.observe: the past trials the sampler reads as "
        "observations (not trials of this study); null otherwise.",
    )


class StudiesPublic(BaseModel):
    """A page of studies and how many match the filter in all."""

    data: list[StudyPublic] = Field(description="This page of studies.")
    count: int = Field(description="Studies matching the filter, over every page.")


TokenScopeName = Literal["admin", "user", "worker"]


class TokenCreate(BaseModel):
    """A new token for an owner, made by an admin."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"scope": "worker", "owner": "gpu-pool", "expires_in": "30d"}]
        },
    )

    scope: TokenScopeName = Field(description="admin, user or worker.")
    owner: str = Field(min_length=1, max_length=64, description="Who the token acts for.")
    expires_in: str | None = Field(
        None,
        max_length=16,
        description="Lifetime: a number and a unit (s, m, h, d, w), e.g. 30d; none never expires.",
    )
    studies_of: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="Worker tokens only: lease only this owner's studies (a private fleet).",
    )


class TokenPublic(_Out):
    """A token as listed: never its value, which is stored only as a keyed hash."""

    id: int = Field(description="The token's id (what revoke takes).")
    owner: str = Field(description="Who the token acts for.")
    scope: TokenScopeName = Field(description="admin, user or worker.")
    created_at: datetime = Field(description="When it was made.")
    last_used_at: datetime | None = Field(description="Last use, to the minute.")
    expires_at: datetime | None = Field(description="When it stops working; null: never.")
    revoked_at: datetime | None = Field(description="When it was revoked; null: it is not.")
    studies_of: str | None = Field(
        None, description="A worker token bound to this owner leases only their studies."
    )


class TokenCreated(TokenPublic):
    """A token just made; its value is shown this once."""

    token: str = Field(description="The bearer token itself; keep it secret.")


class TokensPublic(BaseModel):
    """Tokens and how many there are."""

    data: list[TokenPublic] = Field(description="The tokens, oldest first.")
    count: int = Field(description="How many tokens are listed.")


class ErrorDetail(BaseModel):
    """What went wrong, where, and how to fix it."""

    code: str = Field(description="Machine-readable kind: invalid, not_found, conflict, ...")
    message: str = Field(description="What is wrong and how to fix it.")
    path: list[str | int] | None = Field(None, description="Where in the request it is wrong.")
    errors: list[dict[str, Any]] | None = Field(
        None, description="Every problem found, each with its path and message."
    )


class ErrorBody(BaseModel):
    """The body of every error answer."""

    detail: ErrorDetail = Field(description="The error.")


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route can give."""
    text = {
        400: "The body is not valid JSON",
        401: "Missing, invalid, expired or revoked token",
        403: "The token's scope does not allow this",
        404: "No such study, trial, token or lease (or not yours)",
        409: "Conflicts with the current state",
        413: "Request body too large",
        422: "Invalid request; `path` says where",
        429: "An owner's limit is reached; the message names it",
        503: "Database unreachable; retry after Retry-After seconds",
    }
    headers = {
        401: {
            "WWW-Authenticate": {"description": "Always `Bearer`.", "schema": {"type": "string"}}
        },
        503: {
            "Retry-After": {
                "description": "Seconds to wait before retrying.",
                "schema": {"type": "integer"},
            }
        },
    }
    entries: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entries[code] = {"model": ErrorBody, "description": text[code]}
        if code in headers:
            entries[code]["headers"] = headers[code]
    return entries
