"""The worker's pull loop: lease a trial, run it, report, repeat.

Shaped like rq's worker: the loop checks for a stop request, takes work, runs
it with a heartbeat beside it, and goes on. A first SIGTERM or SIGINT lets the
current trial finish and then exits; a second one lets go of the trial (the
service re-queues it) and exits at once. A trial that raises is reported as
failed and the worker carries on; when several in a row fail with the same
error (a missing file, a device that is not there), it waits longer and longer
before the next lease instead of failing trial after trial.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunefleet.http import Backoff, Interrupted, Unreachable
from tunefleet.protocol import WORKER_INTERRUPTED, Assignment, TrialOutcome
from workers.client import Rejected, ServiceClient
from workers.config import DEFAULT_OBJECTIVE, WorkerSettings
from workers.failures import FailureStreak
from workers.heartbeat import Heartbeat, RunningTrial
from workers.objective import PACK_OBJECTIVE, Objective, PackObjective, load_objective, one_by_one
from workers.outcome import (
    TrialAbandoned,
    WorkerInterrupted,
    failure_reason,
    is_pruned,
    unpack_result,
)

__all__ = ["Worker", "run_worker"]

log = logging.getLogger("tunefleet.worker")


def _warm_backbones() -> list[str]:
    """The source models the engine holds loaded (none before it has run a trial)."""
    sources = sys.modules.get("workers.transfer.sources")  # imported by the first trial
    return sources.warm_backbones() if sources is not None else []


class Worker:
    """One worker: one device, one trial at a time."""

    def __init__(
        self,
        client: ServiceClient,
        *,
        worker_id: str,
        device: str,
        objective: Objective,
        cache_dir: Path,
        artifact_dir: Path,
        max_trials: int | None = None,
        idle_exit_s: float | None = None,
        poll_interval_max_s: float = 10.0,
        failure_backoff_after: int = 3,
        failure_backoff: Backoff | None = None,
        pack: int = 1,
        pack_objective: PackObjective | None = None,
    ) -> None:
        self.client = client
        # Trials leased at once (POST /leases/batch) and run by pack_objective.
        self.pack = pack
        self.pack_objective = pack_objective or one_by_one(objective)
        self.worker_id = worker_id
        self.device = device
        self.objective = objective
        self.cache_dir = cache_dir
        self.artifact_dir = artifact_dir
        self.max_trials = max_trials
        self.idle_exit_s = idle_exit_s
        self.poll_backoff = Backoff(base_s=0.25, max_s=poll_interval_max_s)
        # First signal: finish the current trial, then exit.
        self.stop_requested = threading.Event()
        # Second signal: stop now; also cuts short the client's waits.
        self.force_stop = client.abort
        self._in_objective = False
        self.trials_run = 0
        self.failures = FailureStreak(backoff_after=failure_backoff_after, backoff=failure_backoff)

    # Signals ---------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if not self.stop_requested.is_set():
            log.info("%s: finishing the current trial, then exiting (again to stop now)", name)
            self.stop_requested.set()
            return
        log.info("%s again: letting go of the current trial and exiting", name)
        self.force_stop.set()
        if self._in_objective:
            raise WorkerInterrupted(name)

    # The loop --------------------------------------------------------------

    def work(self) -> int:
        """Run trials until told to stop, out of trials or idle too long; returns how many."""
        log.info("worker %s on %s pulling from the service", self.worker_id, self.device)
        idle_since = time.monotonic()
        polls = 0
        while not self.stop_requested.is_set() and not self.force_stop.is_set():
            try:
                assignments = self._lease()
            except Interrupted:
                break
            # A Rejected lease (bad token, bad worker id) would be refused again: it
            # propagates and the worker exits with the service's message.
            if not assignments:
                idle_s = time.monotonic() - idle_since
                if self.idle_exit_s is not None and idle_s >= self.idle_exit_s:
                    log.info("no work for %.0fs: exiting", idle_s)
                    break
                delay = self.poll_backoff.delay(polls)
                if self.idle_exit_s is not None:
                    delay = min(delay, max(0.05, self.idle_exit_s - idle_s))
                polls += 1
                self.stop_requested.wait(delay)
                continue
            polls = 0
            if self.stop_requested.is_set():
                # Told to stop while the lease was on its way: hand it straight back.
                for assignment in assignments:
                    self._let_go(RunningTrial(assignment), WORKER_INTERRUPTED)
                break
            if self.pack > 1:
                self.run_pack(assignments)
            else:
                self.run(assignments[0])
            self.trials_run += len(assignments)
            idle_since = time.monotonic()
            if self.max_trials is not None and self.trials_run >= self.max_trials:
                log.info("ran %s: exiting", _trials(self.trials_run))
                break
            self.failures.back_off(self.stop_requested)
        return self.trials_run

    def _lease(self) -> list[Assignment]:
        if self.pack == 1:
            assignment = self.client.lease(
                worker_id=self.worker_id,
                device=self.device,
                abort=self.stop_requested,
                warm_backbones=_warm_backbones(),
            )
            return [] if assignment is None else [assignment]
        count = self.pack
        if self.max_trials is not None:
            count = min(count, self.max_trials - self.trials_run)
        return self.client.lease_batch(
            worker_id=self.worker_id,
            device=self.device,
            count=count,
            abort=self.stop_requested,
            warm_backbones=_warm_backbones(),
        )

    def run(self, assignment: Assignment) -> None:
        """Run one leased trial to its end: complete, pruned, failed or let go."""
        trial = RunningTrial(assignment)
        log.info(
            "trial %s (study %s, #%s) params %s",
            trial.trial_id,
            assignment.study_id,
            assignment.number,
            assignment.params,
        )
        # Every call on the trial carries the assignment's lease secret.
        self.client.remember(assignment)
        heartbeat = Heartbeat(self.client, trial, assignment.heartbeat_interval_s)
        heartbeat.start()
        try:
            self._run_with_heartbeat(trial)
        finally:
            heartbeat.stop()
            self.client.forget(trial.trial_id)

    def _run_with_heartbeat(self, trial: RunningTrial) -> None:
        report = self._reporter(trial)
        try:
            self._in_objective = True
            try:
                if self.force_stop.is_set():
                    raise WorkerInterrupted("stop requested")
                outcome = self.objective(
                    trial.assignment,
                    report,
                    device=self.device,
                    cache_dir=self.cache_dir,
                    artifact_dir=self.artifact_dir,
                )
            finally:
                self._in_objective = False
        except (WorkerInterrupted, TrialAbandoned, Exception) as error:
            outcome = error
        self._settle(trial, outcome)

    def run_pack(self, assignments: list[Assignment]) -> None:
        """Run leased trials together (fused where they can be), each with its own
        heartbeat and its own end: complete, pruned, failed or let go."""
        trials = [RunningTrial(a) for a in assignments]
        beats = []
        for trial in trials:
            self.client.remember(trial.assignment)
            beat = Heartbeat(self.client, trial, trial.assignment.heartbeat_interval_s)
            beat.start()
            beats.append(beat)
        try:
            try:
                self._in_objective = True
                if self.force_stop.is_set():
                    raise WorkerInterrupted("stop requested")
                outcomes = self.pack_objective(
                    [t.assignment for t in trials],
                    [self._reporter(t) for t in trials],
                    device=self.device,
                    cache_dir=self.cache_dir,
                    artifact_dir=self.artifact_dir,
                )
            finally:
                self._in_objective = False
        except WorkerInterrupted as error:
            outcomes = [error] * len(trials)
        try:
            for trial, outcome in zip(trials, outcomes, strict=True):
                self._settle(trial, outcome)
        finally:
            for trial, beat in zip(trials, beats, strict=True):
                beat.stop()
                self.client.forget(trial.trial_id)

    def _settle(self, trial: RunningTrial, outcome: Any) -> None:
        """Tell the service how the trial ended: a result, or the exception that ended it."""
        if isinstance(outcome, WorkerInterrupted):
            self._let_go(trial, WORKER_INTERRUPTED)
            return
        if isinstance(outcome, TrialAbandoned):
            self._let_go(trial, f"abandoned: {trial.abandon_reason}")
            return
        if isinstance(outcome, BaseException):
            error = outcome
            if is_pruned(error):
                # The service marked the trial PRUNED when it answered prune=true.
                log.info("trial %s pruned: %s", trial.trial_id, error)
                self.failures.note(None)
                return
            reason, detail = failure_reason(error)
            self.failures.note(detail)
            if self.failures.length > 1:
                # The traceback was logged with the first of the streak.
                log.error("trial %s failed again: %s", trial.trial_id, detail)
            else:
                log.error("trial %s failed (%s)", trial.trial_id, reason, exc_info=error)
            self._send(
                lambda: self.client.fail(
                    trial.trial_id, reason=reason, requeue=False, detail=detail
                ),
                trial,
            )
            return
        result = outcome
        if trial.abandoned.is_set():
            self._let_go(trial, f"abandoned: {trial.abandon_reason}")
            return
        self.failures.note(None)
        values, attrs, artifact = unpack_result(result)
        outcome = self._send(lambda: self._complete(trial, values, attrs, artifact), trial)
        if outcome is not None:
            log.info(
                "trial %s %s %s",
                trial.trial_id,
                outcome.state,
                outcome.values if outcome.state == "complete" else outcome.reason,
            )

    def _reporter(self, trial: RunningTrial) -> Callable[[int, float], bool]:
        def report(step: int, value: float) -> bool:
            if trial.abandoned.is_set():
                raise TrialAbandoned(trial.abandon_reason)
            trial.epoch = int(step)
            try:
                prune = self.client.report_intermediate(
                    trial.trial_id, step=int(step), value=float(value)
                )
            except Rejected as error:
                # 409 or 404: the lease was reaped or the trial finished elsewhere.
                trial.abandon(f"intermediate refused ({error.message})")
                raise TrialAbandoned(trial.abandon_reason) from error
            except Interrupted as error:
                raise WorkerInterrupted("stop requested") from error
            return prune

        return report

    def _complete(
        self, trial: RunningTrial, values: Any, attrs: Any, artifact: str | None
    ) -> TrialOutcome:
        """Hand in the values; an artifact the service cannot reach does not cost them."""
        try:
            return self.client.complete(
                trial.trial_id, values=values, attrs=attrs, artifact=artifact
            )
        except Rejected as error:
            if error.status_code != 422 or artifact is None or "artifact" not in (error.path or []):
                raise
            log.warning(
                "trial %s: the service refused the artifact %s (%s); completing without it: "
                "give the workers the API's TUNEFLEET_ARTIFACT_DIR (shared storage)",
                trial.trial_id,
                artifact,
                error.message,
            )
            return self.client.complete(trial.trial_id, values=values, attrs=attrs, artifact=None)

    def _let_go(self, trial: RunningTrial, reason: str) -> None:
        """Give the trial back so that the service re-queues its parameters."""
        log.info("letting go of trial %s: %s", trial.trial_id, reason)
        self._send(
            lambda: self.client.fail(trial.trial_id, reason=reason, requeue=True),
            trial,
            quiet=True,
            attempts=3,
        )

    def _send(
        self,
        call: Callable[[], Any],
        trial: RunningTrial,
        *,
        quiet: bool = False,
        attempts: int | None = None,
    ) -> Any:
        """Deliver a final answer; a 409/404 means the service already settled the trial."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return call()
            except Rejected as error:
                level = logging.INFO if quiet else logging.WARNING
                log.log(level, "trial %s: the service refused: %s", trial.trial_id, error)
                return None
            except Interrupted:
                log.warning("trial %s: stopped before the service answered", trial.trial_id)
                return None
            except Unreachable as error:
                if attempts is not None and attempt >= attempts:
                    log.warning("trial %s: giving up: %s", trial.trial_id, error)
                    return None


def _trials(n: int) -> str:
    return f"{n} trial" if n == 1 else f"{n} trials"


def run_worker(settings: WorkerSettings, *, objective: Objective | None = None) -> int:
    """Run a worker process with these settings until it exits; returns the trial count."""
    device = settings.resolved_device()
    abort = threading.Event()
    client = ServiceClient(
        settings.service_url,
        settings.token,
        timeout_s=settings.request_timeout_s,
        backoff=Backoff(settings.backoff_base_s, settings.backoff_max_s),
        abort=abort,
    )
    worker = Worker(
        client,
        worker_id=settings.resolved_worker_id(),
        device=device,
        objective=objective or load_objective(settings.objective),
        cache_dir=settings.cache_dir,
        artifact_dir=settings.artifact_dir,
        max_trials=settings.max_trials,
        idle_exit_s=settings.idle_exit_s,
        poll_interval_max_s=settings.poll_interval_max_s,
        failure_backoff_after=settings.failure_backoff_after,
        failure_backoff=Backoff(settings.failure_backoff_base_s, settings.failure_backoff_max_s),
        pack=settings.pack,
        pack_objective=(
            load_objective(PACK_OBJECTIVE)
            if objective is None and settings.objective == DEFAULT_OBJECTIVE
            else None
        ),
    )
    if threading.current_thread() is threading.main_thread():
        worker.install_signal_handlers()
    with client:
        return worker.work()
