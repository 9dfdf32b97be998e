"""What every benchmark shares: the command line, the results file, summary
statistics, and (for the service benchmarks) a database and a real API process.

Databases, API processes and tokens come from the test suite's fixtures
(tests/conftest.py), so a benchmark runs the service exactly as the tests do.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
API = "/api/v1"


def engine_assignment(
    params: dict[str, Any], *, number: int = 0, study_id: int = 0, **spec: Any
) -> dict[str, Any]:
    """A lease's JSON for the engine's run_trial, which validates it as a worker does:
    `spec` fields over a digits study with one searched parameter and, unless given, no
    robustness suite (the benchmarks time training, not attacks)."""
    return {
        "trial_id": number,
        "study_id": study_id,
        "number": number,
        "params": params,
        "spec": {
            "name": "bench",
            "source_model": "builtin:digits-cnn",
            "dataset": "builtin:digits-5to9",
            "objectives": [{"metric": "accuracy", "direction": "maximize"}],
            "search_space": {"lr": {"type": "float", "low": 1e-5, "high": 1.0, "log": True}},
            "robustness": {"gaussian_sigma": [], "fgsm_eps": []},
            **spec,
        },
        "lease_expires_at": "2100-01-01T00:00:00Z",
    }


def full_trial(assignment: dict[str, Any], dirs: Path, **options: Any) -> Any:
    """The engine's run_trial to its last epoch (never pruned), with its model cache and
    artifacts under `dirs`; `options` go to run_trial (device, feature_cache, access)."""
    from workers.transfer import run_trial

    return run_trial(
        assignment,
        lambda epoch, value: False,
        cache_dir=dirs / "cache",
        artifact_dir=dirs / "artifacts",
        **options,
    )


def parser(description: str) -> argparse.ArgumentParser:
    """The flags every benchmark takes: --tiny for CI, --out for the results folder."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--tiny", action="store_true", help="a size that runs in seconds (CI)")
    p.add_argument(
        "--out",
        type=Path,
        default=RESULTS_DIR,
        help=f"folder of the JSON results (default {RESULTS_DIR})",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared machine, more threads mostly wait)",
    )
    return p


def apply_threads(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)


def machine() -> dict[str, Any]:
    """Where the figures were measured."""
    import torch

    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "optuna": _version("optuna"),  # None on a GPU node that runs only the engine
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    with suppress(OSError, StopIteration):
        info["cpu_model"] = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    return info


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def write_results(name: str, results: dict[str, Any], args: argparse.Namespace) -> Path:
    """results plus the command and machine, as <out>/<name>.json."""
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    body = {
        "benchmark": name,
        "command": " ".join([_python(), "-m", f"bench.{name}", *sys.argv[1:]]),
        "tiny": bool(getattr(args, "tiny", False)),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        **results,
    }
    path.write_text(json.dumps(body, indent=2, default=str) + "\n")
    print(f"results: {path}")
    return path


def _python() -> str:
    """The interpreter as the docs spell it: .venv/bin/python inside the repository."""
    root = Path(__file__).resolve().parent.parent
    executable = Path(sys.executable)
    with suppress(ValueError):
        return str(executable.relative_to(root))
    return executable.name


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between the closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """n, median, p90, mean, min and max of a sample."""
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p90": percentile(values, 90),
        "mean": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
    }


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table, the same on stdout and in docs/benchmarks.md."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# The service side -------------------------------------------------------------


def _fixtures():
    """tests/conftest.py, importable when the benchmark runs from the repository root."""
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    from tests import conftest

    return conftest


@contextmanager
def bench_database() -> Iterator[str]:
    """A new migrated PostgreSQL database (tf_bench_*), dropped afterwards."""
    from service.migrate import migrate

    fixtures = _fixtures()
    url = fixtures.create_database("tf_bench")
    try:
        migrate(url)
        yield url
    finally:
        fixtures.drop_database(url)


@dataclass
class Service:
    """A running `tunefleet serve` and the tokens a benchmark needs."""

    url: str
    database_url: str
    api_workers: int
    pid: int
    user_token: str
    worker_token: str


@contextmanager
def api_service(database_url: str, *, api_workers: int = 1) -> Iterator[Service]:
    """`tunefleet serve [--workers N]` on the database, with a user and a worker token."""
    fixtures = _fixtures()
    with tempfile.TemporaryDirectory(prefix="tf-bench-") as tmp:
        tmp_dir = Path(tmp)
        # A reaper that never reaps a lease during a benchmark: nothing dies here.
        settings = {"grace_period_s": 600, "heartbeat_interval_s": 60}
        if api_workers == 1:
            server = fixtures.start_api_server(database_url, tmp_dir, **settings)
        else:
            server = _start_api_processes(fixtures, database_url, tmp_dir, api_workers, settings)
        try:
            yield Service(
                url=server.url,
                database_url=database_url,
                api_workers=api_workers,
                pid=server.proc.pid,
                user_token=fixtures.create_token(database_url, scope="user", owner="bench"),
                worker_token=fixtures.create_token(database_url, scope="worker", owner="bench"),
            )
        finally:
            server.stop()


def _start_api_processes(fixtures, database_url: str, tmp_dir: Path, workers: int, settings):
    """start_api_server with uvicorn's --workers (which the test fixture does not take)."""
    port = fixtures.free_port()
    settings = {"data_dir": tmp_dir, "database_url": database_url, **settings}
    log_path = tmp_dir / f"api-{port}.log"
    log_file = open(log_path, "w")  # noqa: SIM115 - the child process owns it
    cmd = [sys.executable, "-m", "tunefleet", "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--workers", str(workers)],
        env=fixtures.subprocess_env(**settings),
        stdout=log_file,
        stderr=subprocess.STDOUT,
        cwd=fixtures.REPO_ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        fixtures.wait_for_http(f"{url}/healthz", proc=proc, timeout_s=60)
    except Exception:
        proc.kill()
        raise RuntimeError(f"API did not start:\n{log_path.read_text()}") from None
    return fixtures.ApiServer(
        url=url, database_url=database_url, proc=proc, log_path=log_path, settings=settings
    )


def create_study(service: Service, spec: dict[str, Any]) -> dict[str, Any]:
    """POST /api/v1/studies as the user; the service's answer (id, name, ...)."""
    import httpx

    answer = httpx.post(
        f"{service.url}{API}/studies",
        json=spec,
        headers={"Authorization": f"Bearer {service.user_token}"},
        timeout=60,
    )
    if answer.status_code != 201:
        raise RuntimeError(f"creating the study failed: {answer.status_code} {answer.text}")
    return answer.json()


def optuna_storage(database_url: str, *, pool_size: int = 2):
    """Optuna's RDBStorage on the database, the way a user of Optuna alone would open it."""
    import optuna

    return optuna.storages.RDBStorage(
        database_url,
        engine_kwargs={"pool_size": pool_size, "max_overflow": 2, "pool_pre_ping": True},
        skip_compatibility_check=True,
    )
