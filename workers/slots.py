"""Several trials at once on one device: `tunefleet worker --slots N`.

Each slot is a worker process of its own (``python -m workers`` with one slot),
started and watched by this one. A slot is the worker of one trial at a time
exactly as without slots: its own lease, heartbeat, reports, failure backoff
and retries, its own torch state. Processes rather than threads because a
trial seeds torch's global generator (head initialisation, dropout): trials
sharing one interpreter would draw from each other's stream and no longer be
the trial they are alone. On a GPU, processes share the device's compute
through CUDA MPS where it runs (docs/deployment.md); without it they
time-slice, which still overlaps one trial's Python and data loading with
another's kernels.

Signals: this process passes each SIGTERM/SIGINT on to every slot, so the
first lets every slot finish its trial and exit, the second makes every slot
hand its trial back at once. The slots run in their own session, so a
terminal's Ctrl-C reaches them once, through here.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping

from workers.config import WorkerSettings

__all__ = ["run_slots", "slot_environment", "slot_trial_caps"]

log = logging.getLogger("tunefleet.worker")


def slot_trial_caps(max_trials: int | None, slots: int) -> list[int | None]:
    """Each slot's --max-trials: the worker's cap shared out, so that the slots run that
    many in all (a slot whose share is 0 is not started)."""
    if max_trials is None:
        return [None] * slots
    share, extra = divmod(max_trials, slots)
    return [share + (1 if k < extra else 0) for k in range(slots)]


def slot_environment(
    settings: WorkerSettings, *, slot: int, max_trials: int | None, base: Mapping[str, str]
) -> dict[str, str]:
    """The environment of slot ``slot``: this worker's settings as TUNEFLEET_* (the token
    included: never on a command line), one slot, its own worker id and trial cap."""
    env = dict(base)
    for name, value in settings.model_dump(mode="json").items():
        key = f"TUNEFLEET_{name.upper()}"
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    env["TUNEFLEET_DEVICE"] = settings.resolved_device()
    env["TUNEFLEET_SLOTS"] = "1"
    env["TUNEFLEET_WORKER_ID"] = f"{settings.resolved_worker_id()}-slot{slot}"
    if max_trials is None:
        env.pop("TUNEFLEET_MAX_TRIALS", None)
    else:
        env["TUNEFLEET_MAX_TRIALS"] = str(max_trials)
    return env


class _Slots:
    """The slot processes and the signals passed on to them."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.procs: list[subprocess.Popen] = []
        self.signals = 0

    def start(self) -> None:
        caps = slot_trial_caps(self.settings.max_trials, self.settings.slots)
        for slot, cap in enumerate(caps):
            if cap == 0 or self.signals:
                continue
            env = slot_environment(self.settings, slot=slot, max_trials=cap, base=os.environ)
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "workers"],
                    env=env,
                    # Their own session: a terminal's Ctrl-C reaches them once, via here.
                    start_new_session=True,
                )
            )
        log.info(
            "%d slots on %s: worker ids %s-slot0..%d",
            len(self.procs),
            self.settings.resolved_device(),
            self.settings.resolved_worker_id(),
            len(self.procs) - 1,
        )

    def pass_on(self, signum: int, _frame: object) -> None:
        self.signals += 1
        name = signal.Signals(signum).name
        if self.signals == 1:
            log.info("%s: every slot finishes its trial, then exits (again to stop now)", name)
        else:
            log.info("%s again: every slot hands its trial back and exits", name)
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    def wait(self) -> int:
        """Wait for every slot; the worst exit code (a refused token is 1 in every slot)."""
        codes = [proc.wait() for proc in self.procs]
        for slot, code in enumerate(codes):
            if code:
                log.error("slot %d exited with %d", slot, code)
        return max(codes, default=0)

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def run_slots(settings: WorkerSettings) -> int:
    """Run ``settings.slots`` slot processes until every one exits; the exit code."""
    slots = _Slots(settings)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, slots.pass_on)
        signal.signal(signal.SIGINT, slots.pass_on)
    slots.start()
    try:
        return slots.wait()
    finally:
        # Only reached early by an error here: no slot outlives its worker.
        slots.kill()
