"""Who may act on a lease, and what a worker may hand in.

A lease is bound to its holder: the token that took it and a lease secret,
returned once with the assignment and kept here only as a hash. Every call on
the trial must come with the same token and that secret (the
``X-Lease-Secret`` header); otherwise it is a 404, as if the trial had no
lease, so a second worker token learns nothing about other workers' trials.

What a worker hands in is checked too: each metric within its range, attrs of
bounded depth and size, an artifact under the artifact root.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from service.auth import Principal
from service.config import Settings
from service.errors import InvalidSpec, NotFound, PayloadTooLarge
from service.models import Lease
from tunefleet.protocol import TrialCompletion

__all__ = [
    "METRIC_RANGES",
    "check_artifact",
    "check_attrs",
    "check_completion",
    "check_holder",
    "check_metric_ranges",
    "new_lease_secret",
]

# The closed range of each metric a trial reports; non-finite values fail the trial.
METRIC_RANGES: dict[str, tuple[float, float]] = {
    "accuracy": (0.0, 1.0),
    "robustness": (0.0, 1.0),
    "latency_ms": (0.0, math.inf),
    "params": (0.0, math.inf),
    "size_mb": (0.0, math.inf),
}


def _digest(secret: str) -> str:
    # The secret is 256 random bits: a plain hash is enough to keep it out of the database.
    return hashlib.sha256(secret.encode()).hexdigest()


def new_lease_secret(lease: Lease, holder: Principal | None) -> str:
    """Bind the lease to this holder with a fresh secret; returns the secret."""
    secret = secrets.token_urlsafe(32)
    lease.secret_hash = _digest(secret)
    lease.token_id = holder.token_id if holder is not None else None
    return secret


def check_holder(lease: Lease, *, holder: Principal, secret: str | None) -> None:
    """NotFound unless the call comes from the lease's token with its secret.

    A lease handed out before leases had secrets (secret_hash NULL) takes calls
    without one, until it ends.
    """
    if lease.secret_hash is None:
        return
    same_token = lease.token_id is None or lease.token_id == holder.token_id
    if not secret or not same_token or not hmac.compare_digest(lease.secret_hash, _digest(secret)):
        raise NotFound(
            f"trial {lease.trial_id} has no lease held by this worker: send the assignment's "
            "lease_secret in the X-Lease-Secret header, with the token that took the lease"
        )


def check_metric_ranges(values: Mapping[str, float]) -> None:
    """InvalidSpec for a finite value outside its metric's range (non-finite ones fail
    the trial elsewhere, with the reason)."""
    for metric, value in values.items():
        low, high = METRIC_RANGES.get(metric, (-math.inf, math.inf))
        if math.isfinite(value) and not low <= value <= high:
            bounds = f"between {low:g} and {high:g}" if math.isfinite(high) else f">= {low:g}"
            raise InvalidSpec(f"{metric} must be {bounds}, not {value!r}", path=["values", metric])


def _depth(value: Any, limit: int) -> int:
    """How deep `value` nests (a scalar is 0), counting no further than limit + 1."""
    deepest = 0
    stack = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list | tuple) and item:
            if level + 1 > limit:
                return level + 1
            deepest = max(deepest, level + 1)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def check_attrs(attrs: Mapping[str, Any], *, max_depth: int, max_bytes: int) -> None:
    """InvalidSpec when attrs nest deeper than max_depth, PayloadTooLarge beyond max_bytes."""
    for key, value in attrs.items():
        if _depth(value, max_depth - 1) > max_depth - 1:
            raise InvalidSpec(
                f"attrs nest at most {max_depth} levels deep (TUNEFLEET_MAX_ATTRS_DEPTH)",
                path=["attrs", key],
            )
    size = len(json.dumps(attrs, default=str))
    if size > max_bytes:
        raise PayloadTooLarge(
            f"attrs are {size} bytes as JSON; at most {max_bytes} (TUNEFLEET_MAX_ATTRS_BYTES)",
            path=["attrs"],
        )


def check_artifact(artifact: str, *, root: Path) -> str:
    """The artifact as an absolute path under the artifact root (a relative one is
    taken from the root); InvalidSpec, naming only what was sent, otherwise."""
    base = os.path.realpath(root)
    if "\0" in artifact or "://" in artifact:
        location = ""
    else:
        location = os.path.realpath(os.path.join(base, artifact))
    if not location.startswith(base + os.sep):
        raise InvalidSpec(
            f"artifact {artifact!r} is not under the artifact root: workers save their "
            "checkpoints under TUNEFLEET_ARTIFACT_DIR",
            path=["artifact"],
        )
    return location


def check_completion(completion: TrialCompletion, settings: Settings) -> str | None:
    """Check values, attrs and artifact of a complete; returns the artifact's location."""
    check_metric_ranges(completion.values)
    check_attrs(
        completion.attrs, max_depth=settings.max_attrs_depth, max_bytes=settings.max_attrs_bytes
    )
    if completion.artifact is None:
        return None
    assert settings.artifact_dir is not None
    return check_artifact(completion.artifact, root=settings.artifact_dir)
