"""A soak before each release: a fleet of HTTP workers against two API processes
on a throwaway PostgreSQL cluster, with faults injected throughout.

    .venv/bin/python -m bench.soak [--tiny] [--minutes 10] [--workers 64]

What runs: its own PostgreSQL cluster (initdb in a temporary folder, as the
`postgres` user when run as root), migrated with `tunefleet migrate`; two
`tunefleet serve` processes on it; N simulated workers (threads, one httpx
client each, given both API URLs: a connection failure, a timeout or a
502/503/504 moves the call to the other one, and a lease is asked again with
the same worker id). Each worker leases, heartbeats, and completes with a value
in [0, 1] and the lease's X-Lease-Secret. A background study keeps the fleet
busy; a small study is created every few seconds and runs to its budget.

Faults: a worker abandons its trial mid-way now and then (as if killed) and
comes back under a new worker id; the first API process is SIGKILLed once a
minute and restarted (the second one lives through the run, so its memory
tells whether a process leaks); the database is stopped once (`pg_ctl stop -m
fast`, 5 s, start).

At the end, with the workers stopped and the reaper's grace period passed, it
checks the database and prints: trials handed out, completed, duplicated (a
trial handed to two workers, or completed twice: must be 0), lost (a
completion the service acknowledged that is not in the database: must be 0),
left RUNNING without an active lease (must be 0), p50/p99 lease latency per
minute, and the API processes' RSS at the start and the end, with the
long-lived process's every 10 s (its growth from the end of the warm-up, 30 s,
to the end must stay under 10%). The exit code is 1 when an invariant does not
hold or, except at --tiny size, the growth is over 10%.
"""

from __future__ import annotations

import glob
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import quadratic
from bench.harness import API, _fixtures, parser, percentile, table, write_results

MAX_RSS_GROWTH = 0.10
SMALL_STUDY_TRIALS = 12
# Service settings: a short grace so abandoned trials are reaped within the run.
SETTINGS = {"heartbeat_interval_s": 1.0, "grace_period_s": 4.0, "reaper_interval_s": 1.0}
FAILOVER_STATUS = {502, 503, 504}


# PostgreSQL ---------------------------------------------------------------------


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else name


class PgCluster:
    """A PostgreSQL cluster of its own in a temporary folder (PostgreSQL refuses root)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.dir = Path(tempfile.mkdtemp(prefix="tf-soak-pg-"))
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run([*self.as_postgres, *args], check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        self._run(_pg_bin("initdb"), "-D", str(self.dir), "-A", "trust", "-U", "postgres")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c max_connections=200"
        log = str(self.dir / "log")
        self._run(_pg_bin("pg_ctl"), "-D", str(self.dir), "-o", options, "-l", log, "-w", "start")

    def stop(self) -> None:
        self._run(_pg_bin("pg_ctl"), "-D", str(self.dir), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        with suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def pg_cluster() -> Iterator[PgCluster]:
    cluster = PgCluster(_fixtures().free_port())
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


# API processes ------------------------------------------------------------------


@dataclass
class ApiProcess:
    """One `tunefleet serve` on a fixed port, which can be SIGKILLed and started again."""

    database_url: str
    data_dir: Path
    port: int
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        fixtures = _fixtures()
        env = fixtures.subprocess_env(
            database_url=self.database_url, data_dir=self.data_dir, **SETTINGS
        )
        log = open(self.data_dir / f"api-{self.port}.log", "a")  # noqa: SIM115 - the child's
        cmd = [sys.executable, "-m", "tunefleet", "serve", "--host", "127.0.0.1"]
        self.proc = subprocess.Popen(
            [*cmd, "--port", str(self.port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=fixtures.REPO_ROOT,
        )
        fixtures.wait_for_http(f"{self.url}/healthz", proc=self.proc, timeout_s=60)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def rss_mb(self) -> float | None:
        """Resident memory of the process and its children (uvicorn's), in MiB."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        return _tree_rss_kb(self.proc.pid) / 1024


def _tree_rss_kb(pid: int) -> int:
    total = 0
    with suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    with suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            total += _tree_rss_kb(int(child))
    return total


# The simulated fleet ------------------------------------------------------------


@dataclass
class Record:
    """What the workers saw, shared between their threads."""

    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)
    holders: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))
    acked: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    lease_ms: list[tuple[float, float]] = field(default_factory=list)
    abandoned: int = 0
    rejected_completes: int = 0
    failovers: int = 0
    empty_leases: int = 0

    def add(self, name: str, amount: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + amount)


class Unavailable(Exception):
    """Neither API process answered within the call's deadline."""


class FleetClient:
    """httpx with failover between the API processes: a transport error or a 502/503/504
    sends the same request to the next URL (a short pause after each full round)."""

    def __init__(self, urls: list[str], token: str, record: Record) -> None:
        import httpx

        self.urls = urls
        self.current = random.randrange(len(urls))
        self.record = record
        self.http = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=10)

    def post(self, path: str, *, deadline_s: float = 60, **kwargs: Any):
        import httpx

        deadline = time.monotonic() + deadline_s
        attempt = 0
        while True:
            url = self.urls[self.current]
            try:
                t0 = time.perf_counter()
                answer = self.http.post(f"{url}{API}{path}", **kwargs)
                if answer.status_code not in FAILOVER_STATUS:
                    return answer, (time.perf_counter() - t0) * 1e3
            except httpx.TransportError:
                pass
            attempt += 1
            self.record.add("failovers")
            self.current = (self.current + 1) % len(self.urls)
            if time.monotonic() > deadline:
                raise Unavailable(path)
            if attempt % len(self.urls) == 0:
                time.sleep(min(0.1 * attempt, 1.0))

    def close(self) -> None:
        self.http.close()


def worker(index: int, client: FleetClient, record: Record, stop: threading.Event, kill_p: float):
    """Lease, heartbeat, complete; now and then abandon the trial and start over."""
    rng = random.Random(index)
    generation = 0
    while not stop.is_set():
        worker_id = f"soak-{index}-{generation}"
        try:
            answer, ms = client.post("/leases", json={"worker_id": worker_id, "device": "cpu"})
        except Unavailable:
            continue
        if answer.status_code == 204:
            record.add("empty_leases")
            stop.wait(0.2)
            continue
        if answer.status_code != 201:
            stop.wait(0.5)
            continue
        assignment = answer.json()
        trial_id = assignment["trial_id"]
        with record.lock:
            record.holders[trial_id].add(worker_id)
            record.lease_ms.append((time.monotonic() - record.started, ms))
        secret = {"X-Lease-Secret": assignment["lease_secret"]}
        if rng.random() < kill_p:  # killed mid-trial: no heartbeat, no complete, a new id
            time.sleep(rng.uniform(0.1, 0.5))
            record.add("abandoned")
            generation += 1
            continue
        for _ in range(2):  # the "training": two epochs, a heartbeat after each
            time.sleep(rng.uniform(0.05, 0.3))
            with suppress(Unavailable):
                client.post(f"/trials/{trial_id}/heartbeat", json={}, headers=secret)
        value = quadratic.objective(assignment["params"])
        try:
            done, _ = client.post(
                f"/trials/{trial_id}/complete", json={"values": {"accuracy": value}}, headers=secret
            )
        except Unavailable:
            continue
        if done.status_code == 200:
            with record.lock:
                record.acked[trial_id].append(value)
        else:  # the lease was reaped while the service was away: the trial was re-queued
            record.add("rejected_completes")


def study_spec(name: str, *, max_trials: int, sampler: str, priority: int) -> dict[str, Any]:
    spec = quadratic.spec(name, max_trials=max_trials, seed=None)
    spec["sampler"] = {"type": sampler}
    spec["budget"]["max_retries"] = 3
    spec["priority"] = priority
    return spec


def create_study(client: FleetClient, spec: dict[str, Any]) -> int | None:
    try:
        answer, _ = client.post("/studies", json=spec)
    except Unavailable:
        return None
    if answer.status_code == 201:
        return answer.json()["id"]
    if answer.status_code == 409:  # a retry after the first attempt went through
        found = client.http.get(
            f"{client.urls[client.current]}{API}/studies/by-name/{spec['name']}"
        )
        return found.json()["id"] if found.status_code == 200 else None
    raise RuntimeError(f"creating a study failed: {answer.status_code} {answer.text}")


# The checks ---------------------------------------------------------------------


def check_database(database_url: str, record: Record) -> dict[str, Any]:
    """Trials and leases as the database holds them, against what the workers saw."""
    import sqlalchemy as sa

    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        states = dict(conn.execute(sa.text("SELECT state, count(*) FROM trials GROUP BY 1")).all())
        orphans = conn.execute(
            sa.text(
                "SELECT count(*) FROM trials t WHERE t.state = 'RUNNING' AND NOT EXISTS"
                " (SELECT 1 FROM tf_leases l WHERE l.trial_id = t.trial_id"
                " AND l.state = 'active')"
            )
        ).scalar_one()
        running_leased = conn.execute(
            sa.text("SELECT count(*) FROM tf_leases WHERE state = 'active'")
        ).scalar_one()
        same_number = conn.execute(
            sa.text(
                "SELECT count(*) FROM (SELECT study_id, number FROM trials"
                " GROUP BY 1, 2 HAVING count(*) > 1) d"
            )
        ).scalar_one()
        stored = dict(
            conn.execute(
                sa.text(
                    "SELECT t.trial_id, v.value FROM trials t JOIN trial_values v"
                    " ON v.trial_id = t.trial_id WHERE t.state = 'COMPLETE'"
                )
            ).all()
        )
        studies = dict(
            conn.execute(sa.text("SELECT state, count(*) FROM tf_studies GROUP BY 1")).all()
        )
    engine.dispose()
    handed_twice = sum(1 for holders in record.holders.values() if len(holders) > 1)
    acked_twice = sum(1 for values in record.acked.values() if len(values) > 1)
    lost = sum(
        1
        for trial_id, values in record.acked.items()
        if trial_id not in stored or abs(stored[trial_id] - values[0]) > 1e-9
    )
    return {
        "trials_by_state": {str(k): v for k, v in states.items()},
        "studies_by_state": {str(k): v for k, v in studies.items()},
        "duplicated": handed_twice + acked_twice + same_number,
        "duplicated_detail": {
            "handed_to_two_workers": handed_twice,
            "acknowledged_twice": acked_twice,
            "same_study_and_number": same_number,
        },
        "lost": lost,
        "orphans": orphans,
        "active_leases_left": running_leased,
    }


def latency_per_minute(samples: list[tuple[float, float]]) -> list[dict[str, Any]]:
    by_minute: dict[int, list[float]] = defaultdict(list)
    for at, ms in samples:
        by_minute[int(at // 60)].append(ms)
    return [
        {
            "minute": minute + 1,
            "leases": len(values),
            "p50_ms": percentile(values, 50),
            "p99_ms": percentile(values, 99),
        }
        for minute, values in sorted(by_minute.items())
    ]


# The run ------------------------------------------------------------------------


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=None, help="default 10 (tiny: 20 s)")
    p.add_argument("--workers", type=int, default=None, help="default 64 (tiny: 8)")
    p.add_argument("--study-every", type=float, default=3.0, help="seconds between new studies")
    p.add_argument("--kill-p", type=float, default=0.02, help="chance a worker abandons a trial")
    p.add_argument("--db-stop", type=float, default=None, help="seconds (default 5; tiny: 1)")
    args = p.parse_args()
    duration = (args.minutes or (20 / 60 if args.tiny else 10)) * 60
    workers = args.workers or (8 if args.tiny else 64)
    db_stop_s = args.db_stop if args.db_stop is not None else (1.0 if args.tiny else 5.0)
    warmup_s = min(30.0, duration / 4)
    fixtures = _fixtures()

    record = Record()
    events: list[dict[str, Any]] = []
    studies: list[int] = []
    rss: dict[str, Any] = {"victim": {}, "witness": {}, "witness_timeline": []}
    with pg_cluster() as cluster, tempfile.TemporaryDirectory(prefix="tf-soak-") as tmp:
        subprocess.run(
            [sys.executable, "-m", "tunefleet", "migrate"],
            env=fixtures.subprocess_env(database_url=cluster.url),
            cwd=fixtures.REPO_ROOT,
            check=True,
            capture_output=True,
        )
        user = fixtures.create_token(cluster.url, scope="user", owner="soak")
        token = fixtures.create_token(cluster.url, scope="worker", owner="soak")
        apis = [ApiProcess(cluster.url, Path(tmp), fixtures.free_port()) for _ in range(2)]
        victim, witness = apis
        try:
            for api in apis:
                api.start()
            rss["victim"]["start"], rss["witness"]["start"] = victim.rss_mb(), witness.rss_mb()
            urls = [api.url for api in apis]
            admin = FleetClient(urls, user, record)
            background = study_spec(
                "soak-background", max_trials=100_000, sampler="random", priority=0
            )
            studies.append(create_study(admin, background))
            stop = threading.Event()
            clients = [FleetClient(urls, token, record) for _ in range(workers)]
            threads = [
                threading.Thread(target=worker, args=(i, c, record, stop, args.kill_p))
                for i, c in enumerate(clients)
            ]
            record.started = time.monotonic()
            for thread in threads:
                thread.start()
            run(duration, warmup_s, db_stop_s, args, cluster, apis, admin, studies, events, rss)
            rss["victim"]["end"], rss["witness"]["end"] = victim.rss_mb(), witness.rss_mb()
            stop.set()
            for thread in threads:
                thread.join(timeout=120)
            for client in [*clients, admin]:
                client.close()
            # The reaper's grace, then a few of its rounds, for the abandoned trials.
            time.sleep(SETTINGS["grace_period_s"] + 3 * SETTINGS["reaper_interval_s"])
            checks = check_database(cluster.url, record)
        finally:
            for api in apis:
                api.stop()

    results = summarize_run(
        args, duration, workers, db_stop_s, warmup_s, record, checks, events, studies, rss
    )
    write_results("soak", results, args)
    print_summary(results)
    if not results["invariants_hold"] or not (args.tiny or results["rss_growth_within_limit"]):
        sys.exit(1)


def run(duration, warmup_s, db_stop_s, args, cluster, apis, admin, studies, events, rss):
    """The fault schedule: studies every few seconds, an API SIGKILL a minute, one DB stop."""
    victim, witness = apis
    started = time.monotonic()
    kills_at = [60.0 * k for k in range(1, int(duration // 60) + 1) if 60.0 * k < duration]
    if not kills_at:  # a run shorter than a minute still loses one process once
        kills_at = [duration * 0.3]
    db_stop_at = duration * 0.6 if db_stop_s > 0 else None
    next_study = next_sample = 0.0
    number = 0
    while (now := time.monotonic() - started) < duration:
        if now >= next_study:
            number += 1
            name = f"soak-{number}"
            spec = study_spec(name, max_trials=SMALL_STUDY_TRIALS, sampler="tpe", priority=1)
            study_id = create_study(admin, spec)
            if study_id is not None:
                studies.append(study_id)
            next_study = now + args.study_every
        if now >= next_sample:
            rss["witness_timeline"].append((round(now), witness.rss_mb()))
            next_sample = now + 10
        if "after_warmup" not in rss["witness"] and now >= warmup_s:
            rss["witness"]["after_warmup"] = witness.rss_mb()
        if kills_at and now >= kills_at[0]:
            kills_at.pop(0)
            victim.kill()
            events.append({"at_s": round(now, 1), "event": "API process SIGKILL"})
            victim.start()
            events.append({"at_s": round(time.monotonic() - started, 1), "event": "API up"})
        if db_stop_at is not None and now >= db_stop_at:
            db_stop_at = None
            cluster.stop()
            events.append({"at_s": round(now, 1), "event": f"database stop ({db_stop_s:g} s)"})
            time.sleep(db_stop_s)
            cluster.start()
            events.append({"at_s": round(time.monotonic() - started, 1), "event": "database up"})
        time.sleep(0.2)


def summarize_run(
    args, duration, workers, db_stop_s, warmup_s, record, checks, events, studies, rss
):
    base = rss["witness"].get("after_warmup") or rss["witness"]["start"]
    end = rss["witness"]["end"]
    growth = (end / base - 1) if base and end else float("nan")
    completed = sum(len(v) for v in record.acked.values())
    invariants = checks["duplicated"] == 0 and checks["lost"] == 0 and checks["orphans"] == 0
    return {
        "config": {
            "minutes": duration / 60,
            "workers": workers,
            "api_processes": 2,
            "study_every_s": args.study_every,
            "small_study_trials": SMALL_STUDY_TRIALS,
            "worker_abandon_p": args.kill_p,
            "db_stop_s": db_stop_s,
            "warmup_s": warmup_s,
            "service_settings": SETTINGS,
        },
        "handed_out": len(record.holders),
        "completed": completed,
        "abandoned": record.abandoned,
        "rejected_completes": record.rejected_completes,
        "failovers": record.failovers,
        "empty_leases": record.empty_leases,
        "studies_created": len(studies),
        **checks,
        "lease_latency_per_minute": latency_per_minute(record.lease_ms),
        "events": events,
        "api_rss_mb": rss,
        "witness_rss_growth": growth,
        "invariants_hold": invariants,
        "rss_growth_within_limit": growth < MAX_RSS_GROWTH,
    }


def print_summary(results: dict[str, Any]) -> None:
    for event in results["events"]:
        print(f"{event['at_s']:>7.1f} s  {event['event']}")
    rss = results["api_rss_mb"]
    warm = rss["witness"].get("after_warmup")
    print(
        table(
            [
                "handed out",
                "completed",
                "duplicated",
                "lost",
                "RUNNING without lease",
                "abandoned",
                "failovers",
                "studies",
                "witness RSS MB (warm -> end)",
                "growth",
            ],
            [
                [
                    results["handed_out"],
                    results["completed"],
                    results["duplicated"],
                    results["lost"],
                    results["orphans"],
                    results["abandoned"],
                    results["failovers"],
                    results["studies_created"],
                    f"{warm or 0:.0f} -> {rss['witness']['end'] or 0:.0f}",
                    f"{results['witness_rss_growth']:+.1%}",
                ]
            ],
        )
    )
    print(
        table(
            ["minute", "leases", "p50 ms", "p99 ms"],
            [
                [m["minute"], m["leases"], m["p50_ms"], m["p99_ms"]]
                for m in results["lease_latency_per_minute"]
            ],
        )
    )
    timeline = ", ".join(f"{at} s {mb:.0f}" for at, mb in rss["witness_timeline"] if mb)
    print(f"witness RSS MB: {timeline}")
    print("invariants hold" if results["invariants_hold"] else "INVARIANTS BROKEN")
    if not results["rss_growth_within_limit"]:
        print(f"RSS growth of the long-lived API process over {MAX_RSS_GROWTH:.0%}")


if __name__ == "__main__":
    main()
