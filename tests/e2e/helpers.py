"""What the end-to-end tests share: worker processes, the demo's spec, leftover checks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO_ROOT, copy_source_models, subprocess_env


def start_worker(
    service_url: str, token: str, tmp_path: Path, index: int, *extra: str
) -> subprocess.Popen:
    """A real `tunefleet worker` process on the CPU, the built-in source model in its cache."""
    cache_dir = copy_source_models(tmp_path / "cache")
    log = open(tmp_path / f"worker-{index}.log", "w")  # noqa: SIM115 - owned by the child
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tunefleet",
            "worker",
            "--service",
            service_url,
            "--device",
            "cpu",
            *extra,
        ],
        env={
            **subprocess_env(cache_dir=cache_dir, artifact_dir=tmp_path / "artifacts", token=token),
            "OMP_NUM_THREADS": "1",
        },
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO_ROOT,
    )


def processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line or environment contains `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            blob = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().split()[2]
        except OSError:
            continue
        if state != "Z" and text.encode() in blob:
            found.append(int(entry.name))
    return found


def wait_until(predicate, *, timeout_s: float, interval_s: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"{what} not reached within {timeout_s}s")
