"""Lease-to-complete latency as the study grows, against Optuna's ask plus tell.

One worker (one httpx client) leases and completes trials of the trivial study
(bench/quadratic.py) through a real `tunefleet serve` on PostgreSQL, after the
study holds 100, 1000 and 2000 completed trials; the same number of ask plus
tell on Optuna's RDBStorage (same database, the sampler the service builds
from the same spec, seed 0 on both sides) at the same sizes. The trials that
make up a size are added with `study.add_trials` (random parameters, their
quadratic value) into the Optuna study the service created, each with a
completed row in the service's lease table as if a worker had run it, and
into the baseline's study.

    .venv/bin/python -m bench.lease_latency [--tiny] [--sizes 100 1000 2000] [--samples S]

Reports median and p90 of one lease + complete (and of each call), and of one
ask + tell, in milliseconds, and the ratio of the medians.
"""

from __future__ import annotations

import time
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
    summarize,
    table,
    write_results,
)

WARMUP_CYCLES = 3
SEED = 0


def top_up(study, spec: dict, size: int) -> float:
    """Add completed trials until the study has `size` of them; returns the seconds spent."""
    from optuna.trial import TrialState

    started = time.perf_counter()
    have = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if size > have:
        study.add_trials(quadratic.random_completed_trials(spec, size - have, seed=size))
    return time.perf_counter() - started


def record_leases(database_url: str, *, study_id: int, optuna_study_id: int) -> None:
    """A completed lease for every trial that has none, as if workers had run them all:
    the service's queries over its lease table then see a study of this size."""
    import sqlalchemy as sa

    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO tf_leases (trial_id, study_id, number, worker_id, device, state,"
                " leased_at, heartbeat_at, expires_at, finished_at)"
                " SELECT t.trial_id, :study_id, t.number, 'bench-fill', 'cpu', 'completed',"
                " now(), now(), now(), now() FROM trials t"
                " WHERE t.study_id = :optuna_study_id"
                " AND NOT EXISTS (SELECT 1 FROM tf_leases l WHERE l.trial_id = t.trial_id)"
            ),
            {"study_id": study_id, "optuna_study_id": optuna_study_id},
        )
    engine.dispose()


def service_cycles(http, worker_id: str, samples: int) -> dict[str, list[float]]:
    """Milliseconds of `samples` lease + complete cycles, one after the other."""
    out: dict[str, list[float]] = {"lease_ms": [], "complete_ms": [], "cycle_ms": []}
    for _ in range(samples):
        t0 = time.perf_counter()
        answer = http.post(f"{API}/leases", json={"worker_id": worker_id, "device": "cpu"})
        t1 = time.perf_counter()
        if answer.status_code != 201:
            raise RuntimeError(f"lease failed: {answer.status_code} {answer.text}")
        assignment = answer.json()
        done = http.post(
            f"{API}/trials/{assignment['trial_id']}/complete",
            json={"values": {quadratic.METRIC: quadratic.objective(assignment["params"])}},
            headers={"X-Lease-Secret": assignment["lease_secret"]},
        )
        t2 = time.perf_counter()
        if done.status_code != 200:
            raise RuntimeError(f"complete failed: {done.status_code} {done.text}")
        out["lease_ms"].append((t1 - t0) * 1e3)
        out["complete_ms"].append((t2 - t1) * 1e3)
        out["cycle_ms"].append((t2 - t0) * 1e3)
    return out


def optuna_cycles(study, dists: dict, samples: int) -> dict[str, list[float]]:
    """Milliseconds of `samples` ask + tell cycles on RDBStorage."""
    out: dict[str, list[float]] = {"ask_ms": [], "tell_ms": [], "cycle_ms": []}
    for _ in range(samples):
        t0 = time.perf_counter()
        trial = study.ask(fixed_distributions=dists)
        t1 = time.perf_counter()
        study.tell(trial, quadratic.objective(trial.params))
        t2 = time.perf_counter()
        out["ask_ms"].append((t1 - t0) * 1e3)
        out["tell_ms"].append((t2 - t1) * 1e3)
        out["cycle_ms"].append((t2 - t0) * 1e3)
    return out


def main() -> None:
    import httpx
    import optuna

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="default 100 1000 2000")
    p.add_argument("--samples", type=int, default=None, help="cycles measured per size")
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sizes = sorted(args.sizes or ([5, 10] if args.tiny else [100, 1000, 2000]))
    samples = args.samples or (3 if args.tiny else 40)
    max_trials = sizes[-1] + (len(sizes) + 1) * (samples + WARMUP_CYCLES) + 10

    rows: list[dict[str, Any]] = []
    with bench_database() as database_url, api_service(database_url) as service:
        name = f"lat-{uuid.uuid4().hex[:8]}"
        spec = quadratic.spec(name, max_trials=max_trials, seed=SEED)
        created = create_study(service, spec)
        storage = optuna_storage(database_url)
        served_study = optuna.load_study(study_name=created["optuna_study_name"], storage=storage)

        baseline_name = f"optuna-{name}"
        sampler, dists = quadratic.optuna_parts(spec)
        optuna.create_study(study_name=baseline_name, storage=storage, direction="maximize")
        direct_study = optuna.load_study(study_name=baseline_name, storage=storage, sampler=sampler)

        headers = {"Authorization": f"Bearer {service.worker_token}"}
        with httpx.Client(base_url=service.url, headers=headers, timeout=60) as http:
            worker_id = f"bench-{name}"
            for index, size in enumerate(sizes):
                fill_s = top_up(served_study, spec, size)
                record_leases(
                    database_url, study_id=created["id"], optuna_study_id=served_study._study_id
                )
                top_up(direct_study, spec, size)
                if index == 0:  # first lease loads the study into the API process
                    service_cycles(http, worker_id, WARMUP_CYCLES)
                    optuna_cycles(direct_study, dists, WARMUP_CYCLES)
                served = service_cycles(http, worker_id, samples)
                direct = optuna_cycles(direct_study, dists, samples)
                row = {
                    "completed_trials": size,
                    "fill_s": fill_s,
                    "service": {k: summarize(v) for k, v in served.items()},
                    "optuna": {k: summarize(v) for k, v in direct.items()},
                }
                row["ratio_median_service_over_optuna"] = ratio(
                    row["service"]["cycle_ms"]["median"], row["optuna"]["cycle_ms"]["median"]
                )
                rows.append(row)
                print(
                    f"{size:>5} trials: lease+complete {row['service']['cycle_ms']['median']:.1f}"
                    f" ms, ask+tell {row['optuna']['cycle_ms']['median']:.1f} ms (medians)",
                    flush=True,
                )
        storage.engine.dispose()

    results = {
        "config": {
            "sizes": sizes,
            "samples_per_size": samples,
            "warmup_cycles": WARMUP_CYCLES,
            "sampler": "TPESampler built by service.search.build_sampler, seed 0",
            "client": "one httpx.Client (keep-alive), sequential calls",
            "api_processes": 1,
            "search_space": quadratic.SEARCH_SPACE,
        },
        "sizes": rows,
    }
    write_results("lease_latency", results, args)
    print(
        table(
            [
                "completed trials",
                "lease+complete median ms",
                "p90 ms",
                "lease median ms",
                "complete median ms",
                "ask+tell median ms",
                "p90 ms",
                "service/Optuna",
            ],
            [
                [
                    r["completed_trials"],
                    r["service"]["cycle_ms"]["median"],
                    r["service"]["cycle_ms"]["p90"],
                    r["service"]["lease_ms"]["median"],
                    r["service"]["complete_ms"]["median"],
                    r["optuna"]["cycle_ms"]["median"],
                    r["optuna"]["cycle_ms"]["p90"],
                    r["ratio_median_service_over_optuna"],
                ]
                for r in rows
            ],
        )
    )


if __name__ == "__main__":
    main()
