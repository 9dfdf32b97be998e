"""Where an API process spends a lease and a complete: py-spy on a real `tunefleet serve`.

Starts the API on a fresh PostgreSQL database, fills the trivial study
(bench/quadratic.py) to `--size` completed trials, attaches
`py-spy record --idle` to the API process, and drives `--samples` lease +
complete cycles from `--workers` worker processes. Then it attributes the
samples of the threads that were inside a request: for the lease and the
complete route, the share of the route's samples that each function was on
the stack for (waits on the database included, since --idle keeps them).

    .venv/bin/pip install py-spy
    .venv/bin/python -m bench.profile_service [--size 2000] [--samples 300] [--workers 1]

Writes bench/results/profile_service.json and the raw (collapsed) stacks
next to it, for flamegraph.pl or speedscope.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from bench import quadratic
from bench.harness import (
    api_service,
    bench_database,
    create_study,
    optuna_storage,
    parser,
    table,
    write_results,
)
from bench.lease_latency import record_leases, top_up
from bench.service_throughput import http_worker, run_processes

# The route handlers of service/api/leases.py whose requests are attributed.
ROUTES = {"lease": "create_lease", "complete": "complete"}
# Frames in these places get a line in the table: our code and Optuna's.
SHOWN = ("service/", "optuna/")
TOP = 25


def parse_collapsed(path: Path) -> list[tuple[list[tuple[str, str]], int]]:
    """py-spy's raw format: `func (file:line);func (file:line);... count` per line."""
    stacks = []
    for line in path.read_text().splitlines():
        frames_text, _, count = line.rpartition(" ")
        if not frames_text:
            continue
        frames = []
        for frame in frames_text.split(";"):
            name, _, where = frame.partition(" (")
            frames.append((name.strip(), where.rstrip(")").rsplit(":", 1)[0]))
        stacks.append((frames, int(count)))
    return stacks


def attribute(stacks, route: str) -> dict[str, Any]:
    """Samples of requests to `route`; for each function of ours or Optuna's below the
    route, the share of those samples it was on the stack for (inclusive)."""
    in_route = [(f, n) for f, n in stacks if any(name == route for name, _ in f)]
    total = sum(n for _, n in in_route)
    inclusive: Counter = Counter()
    leaves: Counter = Counter()
    for frames, n in in_route:
        below = frames[next(i for i, (name, _) in enumerate(frames) if name == route) :]
        for key in {(name, _short(file)) for name, file in below[1:] if _shown(file)}:
            inclusive[key] += n
        leaves[_area(frames[-1][1])] += n
    return {
        "samples": total,
        "inclusive_share": {
            f"{file}:{name}": n / total for (name, file), n in inclusive.most_common(TOP)
        },
        "leaf_share_by_area": {k: v / total for k, v in leaves.most_common()},
    }


def _shown(file: str) -> bool:
    return any(file.startswith(place) or f"/{place}" in file for place in SHOWN)


def _short(file: str) -> str:
    """optuna/storages/_rdb/storage.py, service/leasing.py: the path from the package on."""
    for place in SHOWN:
        if file.startswith(place):
            return file
        if f"/{place}" in file:
            return place + file.split(f"/{place}", 1)[1]
    return file


def _area(file: str) -> str:
    """Which library a leaf frame belongs to: where the time actually went."""
    for marker in (
        "psycopg",
        "sqlalchemy",
        "optuna",
        "numpy",
        "scipy",
        "pydantic",
        "fastapi",
        "starlette",
        "anyio",
        "uvicorn",
        "/service/",
        "threading",
        "socket",
        "ssl",
    ):
        if marker in file:
            return marker.strip("/")
    return "other"


def main() -> None:
    import httpx
    import optuna

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=None, help="completed trials first (2000)")
    p.add_argument("--samples", type=int, default=None, help="lease + complete cycles (300)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    size = args.size or (20 if args.tiny else 2000)
    samples = args.samples or (10 if args.tiny else 300)
    py_spy = str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        py_spy = shutil.which("py-spy") or py_spy
    if not Path(py_spy).exists():
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / f"profile_service-{size}-n{args.workers}.pyspy.txt"

    with bench_database() as database_url, api_service(database_url) as service:
        name = f"prof-{uuid.uuid4().hex[:8]}"
        # The budget ends the run: `size` added, one warm-up, then `samples` measured.
        spec = quadratic.spec(name, max_trials=size + 1 + samples, seed=0)
        created = create_study(service, spec)
        storage = optuna_storage(database_url)
        study = optuna.load_study(study_name=created["optuna_study_name"], storage=storage)
        top_up(study, spec, size)
        record_leases(database_url, study_id=created["id"], optuna_study_id=study._study_id)
        storage.engine.dispose()
        # One cycle before recording: the study is loaded into the API process.
        with httpx.Client(
            base_url=service.url,
            headers={"Authorization": f"Bearer {service.worker_token}"},
            timeout=60,
        ) as http:
            lease = http.post("/api/v1/leases", json={"worker_id": "warm", "device": "cpu"})
            trial = lease.json()
            http.post(
                f"/api/v1/trials/{trial['trial_id']}/complete",
                json={"values": {quadratic.METRIC: quadratic.objective(trial["params"])}},
                headers={"X-Lease-Secret": trial["lease_secret"]},
            )
        pid = service.pid
        spy = subprocess.Popen(
            [
                py_spy,
                "record",
                "--idle",
                "--threads",
                "-r",
                str(args.rate),
                "--format",
                "raw",
                "-o",
                str(raw),
                "--pid",
                str(pid),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)
        served = run_processes(
            http_worker,
            [(service.url, service.worker_token, f"prof-{i}") for i in range(args.workers)],
        )
        spy.send_signal(signal.SIGINT)
        _, spy_err = spy.communicate(timeout=60)
        if not raw.exists():
            raise SystemExit(f"py-spy wrote nothing:\n{spy_err}")

    stacks = parse_collapsed(raw)
    routes = {route: attribute(stacks, handler) for route, handler in ROUTES.items()}
    results = {
        "config": {
            "size": size,
            "samples": samples,
            "workers": args.workers,
            "py_spy_rate_hz": args.rate,
            "raw_stacks": str(raw),
        },
        "run": served,
        "routes": routes,
    }
    write_results("profile_service", results, args)
    for route, out in routes.items():
        print(f"\n{route} ({out['samples']} samples):")
        print(
            table(
                ["function", "share of the route's time"],
                [[k, f"{v:.0%}"] for k, v in out["inclusive_share"].items()],
            )
        )
        print(
            "leaf frames by library: "
            + ", ".join(f"{k} {v:.0%}" for k, v in out["leaf_share_by_area"].items())
        )


if __name__ == "__main__":
    main()
