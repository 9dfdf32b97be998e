"""Repeated failures: when trial after trial fails with the same error on this
worker (a missing file, a device that is not there), it waits longer and longer
before the next lease instead of failing every trial the service hands it."""

from __future__ import annotations

import logging
import threading

from tunefleet.http import Backoff

__all__ = ["FailureStreak"]

log = logging.getLogger("tunefleet.worker")


class FailureStreak:
    """Trials in a row that failed with the same error, and the wait they call for."""

    def __init__(self, *, backoff_after: int = 3, backoff: Backoff | None = None) -> None:
        # The same error this many trials in a row: back off before the next lease.
        self.backoff_after = backoff_after
        self.backoff = backoff or Backoff(base_s=2.0, max_s=300.0)
        self.last_error: str | None = None
        self.length = 0

    def note(self, error: str | None) -> None:
        """Count trials in a row that failed with the same error (None: one that did not)."""
        if error is not None and error == self.last_error:
            self.length += 1
        else:
            self.length = 0 if error is None else 1
        self.last_error = error

    def back_off(self, stop: threading.Event) -> None:
        """Wait before the next lease if the streak is long enough (``stop`` cuts it short)."""
        excess = self.length - self.backoff_after
        if excess < 0:
            return
        delay = self.backoff.delay(excess)
        log.warning(
            "%d trials in a row failed with the same error on this worker (%s): "
            "waiting %.0fs before the next lease; fix the cause (device, files) or stop the worker",
            self.length,
            self.last_error,
            delay,
        )
        stop.wait(delay)
