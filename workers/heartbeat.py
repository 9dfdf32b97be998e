"""A leased trial while it runs: what the loop knows about it, and the thread
that keeps its lease alive and turns the service's stop into an abandon."""

from __future__ import annotations

import logging
import threading

from tunefleet.http import Interrupted, Unreachable
from tunefleet.protocol import Assignment
from workers.client import Rejected, ServiceClient

__all__ = ["Heartbeat", "RunningTrial"]

log = logging.getLogger("tunefleet.worker")


class RunningTrial:
    """What the loop knows about the trial it is running."""

    def __init__(self, assignment: Assignment) -> None:
        self.assignment = assignment
        self.trial_id = assignment.trial_id
        self.total_epochs = assignment.spec.budget.epochs
        self.epoch: int | None = None
        self.abandoned = threading.Event()
        self.abandon_reason = ""

    def abandon(self, reason: str) -> None:
        if not self.abandoned.is_set():
            log.info("abandoning trial %s: %s", self.trial_id, reason)
            self.abandon_reason = reason
            self.abandoned.set()

    def progress(self) -> dict[str, int] | None:
        if self.epoch is None:
            return None
        return {"epoch": self.epoch, "total_epochs": self.total_epochs}


class Heartbeat(threading.Thread):
    """Beats for one trial until stopped; turns a stop answer into an abandon."""

    def __init__(self, client: ServiceClient, trial: RunningTrial, interval_s: float) -> None:
        super().__init__(name=f"heartbeat-{trial.trial_id}", daemon=True)
        self.client = client
        self.trial = trial
        self.interval_s = interval_s
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval_s):
            try:
                ack = self.client.heartbeat(self.trial.trial_id, progress=self.trial.progress())
            except (Rejected, Unreachable, Interrupted) as error:
                # The next beat is the retry; the lease outlives a few missed beats.
                log.warning("heartbeat of trial %s failed: %s", self.trial.trial_id, error)
                if isinstance(error, Rejected) and error.status_code in (404, 409):
                    self.trial.abandon(f"lease lost ({error.message})")
                continue
            except Exception:  # never let the heartbeat thread die silently
                log.exception("heartbeat of trial %s failed", self.trial.trial_id)
                continue
            if ack.stop:
                self.trial.abandon(ack.reason or "the service said stop")

    def stop(self) -> None:
        self.done.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=self.interval_s + 5)
