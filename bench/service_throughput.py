"""Service throughput: trials per second through the API against Optuna's RDBStorage directly.

Both sides run the trivial study (bench/quadratic.py: TPE, four parameters, a
quadratic objective that costs nothing) on the same PostgreSQL.

- service: a real `tunefleet serve` (one API process, and with
  `--api-workers 2` also uvicorn's `--workers 2`); N worker *processes*, each
  with one httpx client, lease and complete trials until the service answers
  204 (the study's max_trials is used up).
- optuna: N *processes*, each with its own RDBStorage on the same database,
  loading one shared study with the sampler the service builds from the same
  spec, and running ask / tell for its share of the trials.

Seeds: the spec's sampler seed is null, so every sampler (each API process,
each Optuna process) draws its own. Trials per second is trials finished over
the wall time from the start signal to the last worker's end; each N runs
`--repeats` service/Optuna pairs back to back, and the figures are medians
(the ratio: the median of the pairs' ratios).

    .venv/bin/python -m bench.service_throughput [--tiny] [--workers 1 4 16]
        [--trials T] [--api-workers 1 2]
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import statistics
import time
import traceback
import uuid
from typing import Any

from bench import quadratic
from bench.harness import (
    API,
    api_service,
    bench_database,
    create_study,
    optuna_storage,
    parser,
    ratio,
    table,
    write_results,
)

START_TIMEOUT_S = 120


def http_worker(url: str, token: str, worker_id: str, ready, start) -> tuple:
    """Lease and complete until 204; returns (trials, errors, start, end)."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"}
    done = errors = 0
    with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
        http.get("/healthz")  # open the connection before the clock starts
        ready.put(worker_id)
        start.wait()
        began = time.monotonic()
        while True:
            answer = http.post(f"{API}/leases", json={"worker_id": worker_id, "device": "cpu"})
            if answer.status_code == 204:
                break
            if answer.status_code != 201:
                errors += 1
                time.sleep(0.05)
                continue
            assignment = answer.json()
            value = quadratic.objective(assignment["params"])
            while True:
                done_answer = http.post(
                    f"{API}/trials/{assignment['trial_id']}/complete",
                    json={"values": {quadratic.METRIC: value}},
                    headers={"X-Lease-Secret": assignment["lease_secret"]},
                )
                if done_answer.status_code == 200:
                    break
                errors += 1
                time.sleep(0.05)
            done += 1
    return done, errors, began, time.monotonic()


def optuna_worker(
    database_url: str, study_name: str, spec: dict, trials: int, ready, start
) -> tuple:
    """ask / tell `trials` times on RDBStorage; returns (trials, errors, start, end)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler, dists = quadratic.optuna_parts(spec)
    storage = optuna_storage(database_url)
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)
    ready.put(study_name)
    start.wait()
    began = time.monotonic()
    for _ in range(trials):
        trial = study.ask(fixed_distributions=dists)
        study.tell(trial, quadratic.objective(trial.params))
    ended = time.monotonic()
    storage.engine.dispose()
    return trials, 0, began, ended


def _child(target, args: tuple, ready, start, results) -> None:
    """Run one worker; its report, or its traceback, goes to the parent."""
    try:
        results.put(target(*args, ready, start))
    except BaseException:
        results.put(traceback.format_exc())
        ready.put("failed")  # the parent may still be waiting for this worker to be ready


def run_processes(target, args_of: list[tuple]) -> dict[str, Any]:
    """Start one process per args tuple, release them together, gather their reports."""
    ctx = mp.get_context("fork")
    ready, results, start = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_child, args=(target, a, ready, start, results)) for a in args_of]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.get(timeout=START_TIMEOUT_S)
    t0 = time.monotonic()
    start.set()
    reports: list = []
    while len(reports) < len(procs):
        try:
            reports.append(results.get(timeout=5))
        except queue.Empty:
            if not any(proc.is_alive() for proc in procs) and results.empty():
                codes = [proc.exitcode for proc in procs]
                raise RuntimeError(
                    f"workers exited without a report (exit codes {codes})"
                ) from None
            continue
        if isinstance(reports[-1], str):
            for proc in procs:
                proc.kill()
            raise RuntimeError(f"a worker failed:\n{reports[-1]}")
    for proc in procs:
        proc.join()
    trials = sum(r[0] for r in reports)
    wall = max(r[3] for r in reports) - t0
    return {
        "trials": trials,
        "errors": sum(r[1] for r in reports),
        "wall_s": wall,
        "trials_per_s": trials / wall,
    }


def service_run(service, workers: int, trials: int) -> dict[str, Any]:
    name = f"tp-{uuid.uuid4().hex[:8]}"
    create_study(service, quadratic.spec(name, max_trials=trials, seed=None))
    return run_processes(
        http_worker,
        [(service.url, service.worker_token, f"bench-{name}-{i}") for i in range(workers)],
    )


def optuna_run(database_url: str, workers: int, trials: int) -> dict[str, Any]:
    import optuna

    name = f"optuna-tp-{uuid.uuid4().hex[:8]}"
    spec = quadratic.spec(name, max_trials=trials, seed=None)
    storage = optuna_storage(database_url, pool_size=1)
    optuna.create_study(study_name=name, storage=storage, direction="maximize")
    storage.engine.dispose()
    shares = [trials // workers + (i < trials % workers) for i in range(workers)]
    return run_processes(optuna_worker, [(database_url, name, spec, n) for n in shares])


def summarize_pairs(workers: int, processes: int, pairs: list[dict]) -> dict[str, Any]:
    """Medians over the paired runs; the ratio is the median of the pairs' ratios."""
    ratios = [ratio(p["service"]["trials_per_s"], p["optuna"]["trials_per_s"]) for p in pairs]
    return {
        "workers": workers,
        "api_processes": processes,
        "service_trials_per_s": statistics.median(p["service"]["trials_per_s"] for p in pairs),
        "optuna_trials_per_s": statistics.median(p["optuna"]["trials_per_s"] for p in pairs),
        "ratio_service_over_optuna": statistics.median(ratios),
        "ratios": ratios,
        "http_errors": sum(p["service"]["errors"] for p in pairs),
        "pairs": pairs,
    }


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, nargs="+", default=None, help="N (default 1 4 16)")
    p.add_argument("--trials", type=int, default=None, help="trials per run (default 120)")
    p.add_argument(
        "--api-workers",
        type=int,
        nargs="+",
        default=None,
        help="uvicorn processes of the API, one run each (default 1 2)",
    )
    p.add_argument("--repeats", type=int, default=None, help="paired runs per N (default 3)")
    args = p.parse_args()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    worker_counts = args.workers or ([1, 2] if args.tiny else [1, 4, 16])
    trials = args.trials or (8 if args.tiny else 100)
    repeats = args.repeats or (1 if args.tiny else 3)
    api_workers = args.api_workers or ([1] if args.tiny else [1, 2])

    runs: list[dict[str, Any]] = []
    with bench_database() as database_url:
        for processes in api_workers:
            with api_service(database_url, api_workers=processes) as service:
                for n in worker_counts:
                    pairs = []
                    # Service and Optuna alternate, so that drift in load hits both alike.
                    for _ in range(repeats):
                        served = service_run(service, n, trials)
                        direct = optuna_run(database_url, n, trials)
                        pairs.append({"service": served, "optuna": direct})
                    runs.append(summarize_pairs(n, processes, pairs))
                    r = runs[-1]
                    print(
                        f"N={n:>2} API processes={processes}: service "
                        f"{r['service_trials_per_s']:.1f} trials/s, Optuna "
                        f"{r['optuna_trials_per_s']:.1f} trials/s (medians of {repeats})",
                        flush=True,
                    )

    results = {
        "config": {
            "trials_per_run": trials,
            "repeats": repeats,
            "workers": worker_counts,
            "api_processes": api_workers,
            "worker_kind": "processes (multiprocessing, fork), one httpx client each",
            "baseline": "N processes, RDBStorage each, ask/tell on one shared study",
            "sampler": "TPESampler built by service.search.build_sampler, seed null",
            "search_space": quadratic.SEARCH_SPACE,
        },
        "runs": runs,
    }
    write_results("service_throughput", results, args)
    print(
        table(
            [
                "N",
                "API processes",
                "service trials/s",
                "Optuna trials/s",
                "service/Optuna",
                "HTTP errors",
            ],
            [
                [
                    r["workers"],
                    r["api_processes"],
                    r["service_trials_per_s"],
                    r["optuna_trials_per_s"],
                    r["ratio_service_over_optuna"],
                    r["http_errors"],
                ]
                for r in runs
            ],
        )
    )


if __name__ == "__main__":
    main()
