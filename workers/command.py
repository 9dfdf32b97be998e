"""`tunefleet worker` (and ``python -m workers``): the settings from the options
over TUNEFLEET_*, checked before the first lease, then one worker or its slots."""

from __future__ import annotations

import logging
from typing import Any

from workers.client import Rejected
from workers.config import WorkerSettings, device_problem
from workers.loop import run_worker

__all__ = ["run_worker_command"]

log = logging.getLogger("tunefleet.worker")


def run_worker_command(*, warm: bool = False, **options: Any) -> int:
    """`tunefleet worker`: settings from the options over TUNEFLEET_*; returns the exit code."""
    from pydantic import ValidationError

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise
    try:
        settings = WorkerSettings(**{k: v for k, v in options.items() if v is not None})
    except ValidationError as error:
        for problem in error.errors():
            name = "TUNEFLEET_" + "_".join(str(p) for p in problem["loc"]).upper()
            log.error("bad setting %s: %s", name, problem["msg"])
        return 2
    if not settings.token and settings.token_file is not None:
        try:
            settings.token = settings.token_file.read_text().strip()
        except OSError as error:
            log.error("cannot read the token file %s: %s", settings.token_file, error.strerror)
            return 2
    if not settings.token:
        log.error("no token: set TUNEFLEET_TOKEN or pass --token-file PATH (a worker-scope token)")
        return 2
    problem = device_problem(settings.resolved_device())
    if problem is not None:
        log.error("bad setting TUNEFLEET_DEVICE (--device): %s", problem)
        return 2
    if warm:
        from workers.transfer.builtin import warm_cache

        warm_cache(settings.cache_dir)
    if settings.slots > 1:
        from workers.slots import run_slots

        return run_slots(settings)
    try:
        run_worker(settings)
    except Rejected as error:
        log.error("the service refused this worker: %s", error)
        return 1
    return 0
