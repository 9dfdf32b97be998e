"""A local fleet: one API process and N worker processes, torn down completely on exit.

Used by `tunefleet demo`; children run in their own sessions so that Ctrl-C in the
terminal reaches only the demo, which then stops them in order.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class LocalFleet:
    """Start with start_api() and start_worker(); stop() leaves no process behind."""

    database_url: str
    data_dir: Path
    settings: dict[str, object] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)
    procs: list[subprocess.Popen] = field(default_factory=list)
    api_url: str = ""

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "TUNEFLEET_DATABASE_URL": self.database_url,
                "TUNEFLEET_DATA_DIR": str(self.data_dir),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update({f"TUNEFLEET_{k.upper()}": str(v) for k, v in self.settings.items()})
        env.update(self.extra_env)
        return env

    def _spawn(
        self, name: str, args: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "w")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            [sys.executable, "-m", "tunefleet", *args],
            env={**self._env(), **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def start_api(self, *, timeout_s: float = 60.0) -> str:
        port = free_port()
        proc = self._spawn("api", ["serve", "--host", "127.0.0.1", "--port", str(port)])
        self.api_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the API exited with code {proc.returncode}; see {self.log_dir / 'api.log'}"
                )
            try:
                if httpx.get(f"{self.api_url}/readyz", timeout=2).status_code == 200:
                    return self.api_url
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the API did not become ready; see {self.log_dir / 'api.log'}")

    def start_worker(self, index: int, token: str, *extra: str) -> subprocess.Popen:
        """A worker; its token goes in its environment, never in argv (`ps` shows argv)."""
        return self._spawn(
            f"worker-{index}",
            ["worker", "--service", self.api_url, *extra],
            env={"TUNEFLEET_TOKEN": token},
        )

    def workers_alive(self) -> int:
        return sum(1 for p in self.procs[1:] if p.poll() is None)

    def stop(self, *, grace_s: float = 15.0) -> None:
        """Workers first (two SIGTERMs: release the trial, exit), then the API; kill stragglers."""
        workers, api = self.procs[1:], self.procs[:1]
        for group in (workers, api):
            for proc in group:
                _signal(proc, signal.SIGTERM)
            if group is workers:
                time.sleep(0.2)
                for proc in group:
                    _signal(proc, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            for proc in group:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    _signal(proc, signal.SIGKILL, group=True)
                    proc.wait()
        self.procs.clear()


def _signal(proc: subprocess.Popen, sig: int, *, group: bool = False) -> None:
    if proc.poll() is not None:
        return
    try:
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    except ProcessLookupError:
        pass
