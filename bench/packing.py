"""Many trials per device: `--pack` (fused heads) and `--slots` (trials side by side).

Everything goes through a real service: a `tunefleet serve` process on
PostgreSQL and real `python -m workers` processes running the trial engine on
the built-in task (digits-cnn -> digits 5-9).

- pack: the same head-only trials (unfreeze_blocks 0: heads on the cached
  features) with `--pack 1` and with `--pack 16`. The parameters are drawn
  once and enqueued in both studies, so the two runs train the same trials;
  the figures are trials per second from the first lease to the last end
  (the service's lease rows) and the largest difference in test accuracy
  between a trial trained fused and the same parameters trained alone.
- slots: trials with one unfrozen backbone block (they cannot fuse) with
  `--slots 1` and `--slots 2`, on the same CPU threads in all (slots 1: one
  process with all of them; slots 2: two processes with half each).
- service cost: the service's wall time per trial for a client that leases
  and completes trials one by one (POST /leases, then /complete) against one
  that leases 16 at once (POST /leases/batch, then /complete each), through
  the worker's own client (workers/client.py), on the same TPE study.

    .venv/bin/python -m bench.packing [--tiny] [--trials 64] [--epochs 3]
        [--pack 16] [--slot-trials 8] [--cost-trials 128]
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    API,
    Service,
    api_service,
    bench_database,
    create_study,
    parser,
    ratio,
    table,
    write_results,
)

SEARCH_SPACE = {
    "lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "weight_decay": {"type": "float", "low": 0.0, "high": 0.05},
    "label_smoothing": {"type": "float", "low": 0.0, "high": 0.2},
}
WORKER_TIMEOUT_S = 1800


def study_spec(name: str, trials: int, epochs: int, **fixed: Any) -> dict[str, Any]:
    """A study of the built-in task: four searched parameters, a two-layer head."""
    return {
        "name": name,
        "source_model": "builtin:digits-cnn",
        "dataset": "builtin:digits-5to9",
        "objectives": [{"metric": "accuracy", "direction": "maximize"}],
        "search_space": SEARCH_SPACE,
        "fixed_params": {"head_depth": 2, "head_width": 64, **fixed},
        "sampler": {"type": "tpe", "seed": 7},
        # Every trial runs to its end: the comparison is of whole trials.
        "pruner": {"type": "none"},
        "budget": {"max_trials": trials, "epochs": epochs},
        # The benchmark times training, not attacks.
        "robustness": {"gaussian_sigma": [], "fgsm_eps": []},
    }


def draw_params(count: int, seed: int = 7) -> list[dict[str, float]]:
    """The same parameters for both sides of a comparison."""
    rng = random.Random(seed)
    return [
        {
            "lr": 10 ** rng.uniform(-3, -1),
            "dropout": rng.uniform(0.0, 0.5),
            "weight_decay": rng.uniform(0.0, 0.05),
            "label_smoothing": rng.uniform(0.0, 0.2),
        }
        for _ in range(count)
    ]


def enqueue(service: Service, study_id: int, params: list[dict[str, float]]) -> None:
    import httpx

    headers = {"Authorization": f"Bearer {service.user_token}"}
    with httpx.Client(base_url=f"{service.url}{API}", headers=headers, timeout=60) as http:
        for p in params:
            answer = http.post(f"/studies/{study_id}/trials", json={"params": p})
            if answer.status_code != 201:
                raise RuntimeError(f"enqueue failed: {answer.status_code} {answer.text}")


def run_worker(
    service: Service, *, args: list[str], trials: int, threads: int, cache_dir: Path, log: Path
) -> None:
    """One `python -m workers` process on the CPU until it has run `trials` trials."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    env.update(
        TUNEFLEET_TOKEN=service.worker_token,
        TUNEFLEET_CACHE_DIR=str(cache_dir),
        TUNEFLEET_ARTIFACT_DIR=str(cache_dir.parent / "artifacts"),
        OMP_NUM_THREADS=str(threads),
    )
    command = [sys.executable, "-m", "workers", "--service", service.url, "--device", "cpu"]
    with open(log, "w") as out:
        done = subprocess.run(
            [*command, "--max-trials", str(trials), "--idle-exit", "60", *args],
            env=env,
            cwd=root,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=WORKER_TIMEOUT_S,
        )
    if done.returncode != 0:
        raise RuntimeError(f"worker exited {done.returncode}:\n{log.read_text()[-3000:]}")


def study_figures(service: Service, study_id: int) -> dict[str, Any]:
    """Trials per second from the first lease to the last end, and each trial's accuracy."""
    import sqlalchemy as sa

    from bench.harness import optuna_storage

    engine = sa.create_engine(service.database_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            first, last, count = conn.execute(
                sa.text(
                    "SELECT min(leased_at), max(finished_at), count(*) FROM tf_leases "
                    "WHERE study_id = :i AND state = 'completed'"
                ),
                {"i": study_id},
            ).one()
            optuna_id = conn.execute(
                sa.text("SELECT optuna_study_id FROM tf_studies WHERE id = :i"), {"i": study_id}
            ).scalar_one()
    finally:
        engine.dispose()
    storage = optuna_storage(service.database_url, pool_size=1)
    try:
        trials = [t for t in storage.get_all_trials(optuna_id) if t.state.name == "COMPLETE"]
    finally:
        storage.engine.dispose()
    seconds = (last - first).total_seconds()
    return {
        "trials": count,
        "seconds": seconds,
        "trials_per_s": count / seconds,
        "accuracy": {_key(t.params): t.values[0] for t in trials},
    }


def _key(params: dict[str, Any]) -> str:
    return ",".join(f"{k}={params[k]!r}" for k in sorted(params))


def run_arm(
    service: Service,
    tmp: Path,
    *,
    name: str,
    spec: dict[str, Any],
    params: list[dict[str, float]],
    worker_args: list[str],
    threads: int,
    cache_dir: Path,
) -> dict[str, Any]:
    study_id = create_study(service, spec)["id"]
    enqueue(service, study_id, params)
    run_worker(
        service,
        args=worker_args,
        trials=len(params),
        threads=threads,
        cache_dir=cache_dir,
        log=tmp / f"{name}.log",
    )
    figures = study_figures(service, study_id)
    print(f"{name}: {figures['trials']} trials in {figures['seconds']:.1f}s", flush=True)
    return figures


def accuracy_gap(a: dict[str, float], b: dict[str, float]) -> dict[str, Any]:
    common = sorted(a.keys() & b.keys())
    gaps = [abs(a[k] - b[k]) for k in common]
    return {"trials_compared": len(common), "max_abs_difference": max(gaps, default=float("nan"))}


def service_cost(service: Service, *, trials: int, count: int) -> dict[str, Any]:
    """Wall seconds per trial for lease+complete one by one, and by batches of `count`."""
    from workers.client import ServiceClient

    out: dict[str, Any] = {}
    for mode in ("single", "batch"):
        spec = study_spec(f"cost-{mode}", trials, 1)
        create_study(service, spec)
        done = 0
        with ServiceClient(service.url, service.worker_token) as client:
            started = time.perf_counter()
            while True:
                if mode == "single":
                    one = client.lease(worker_id="bench-cost", device="cpu")
                    assignments = [] if one is None else [one]
                else:
                    assignments = client.lease_batch(
                        worker_id="bench-cost", device="cpu", count=count
                    )
                if not assignments:
                    break
                for assignment in assignments:
                    client.remember(assignment)
                    client.complete(assignment.trial_id, values={"accuracy": 0.5})
                    client.forget(assignment.trial_id)
                    done += 1
            seconds = time.perf_counter() - started
        out[mode] = {"trials": done, "seconds": seconds, "ms_per_trial": 1000 * seconds / done}
    out["ratio_single_over_batch"] = ratio(
        out["single"]["ms_per_trial"], out["batch"]["ms_per_trial"]
    )
    return out


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=64, help="head-only trials per pack arm")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--pack", type=int, default=16)
    p.add_argument("--slot-trials", type=int, default=8, help="unfrozen trials per slots arm")
    p.add_argument("--slot-threads", type=int, default=2, help="CPU threads of a slots arm")
    p.add_argument("--cost-trials", type=int, default=128)
    p.add_argument("--cost-count", type=int, default=16)
    args = p.parse_args()
    if args.tiny:
        args.trials, args.epochs, args.pack = 8, 1, 4
        args.slot_trials, args.cost_trials = 4, 32

    from workers.transfer.builtin import warm_cache

    results: dict[str, Any] = {"config": vars(args) | {"out": str(args.out)}}
    with tempfile.TemporaryDirectory(prefix="tf-packing-") as tmp_name:
        tmp = Path(tmp_name)
        cache_dir = tmp / "cache"
        warm_cache(cache_dir)  # pretrained once, before any clock starts
        with bench_database() as url, api_service(url) as service:
            params = draw_params(args.trials)
            head_only = study_spec("pack", args.trials, args.epochs)
            pack = {}
            for k in (1, args.pack):
                pack[k] = run_arm(
                    service,
                    tmp,
                    name=f"pack-{k}",
                    spec={**head_only, "name": f"pack-{k}"},
                    params=params,
                    worker_args=["--pack", str(k)],
                    threads=args.threads,
                    cache_dir=cache_dir,
                )
            slot_params = draw_params(args.slot_trials, seed=8)
            unfrozen = study_spec("slots", args.slot_trials, args.epochs, unfreeze_blocks=1)
            slots = {}
            for n in (1, 2):
                slots[n] = run_arm(
                    service,
                    tmp,
                    name=f"slots-{n}",
                    spec={**unfrozen, "name": f"slots-{n}"},
                    params=slot_params,
                    worker_args=["--slots", str(n)],
                    threads=max(1, args.slot_threads // n),
                    cache_dir=cache_dir,
                )
            cost = service_cost(service, trials=args.cost_trials, count=args.cost_count)

    results["pack"] = {
        str(k): {key: v for key, v in fig.items() if key != "accuracy"} for k, fig in pack.items()
    }
    results["pack_speedup"] = ratio(pack[args.pack]["trials_per_s"], pack[1]["trials_per_s"])
    results["pack_accuracy"] = accuracy_gap(pack[1]["accuracy"], pack[args.pack]["accuracy"])
    results["slots"] = {
        str(n): {key: v for key, v in fig.items() if key != "accuracy"} for n, fig in slots.items()
    }
    results["slots_speedup"] = ratio(slots[2]["trials_per_s"], slots[1]["trials_per_s"])
    results["slots_accuracy"] = accuracy_gap(slots[1]["accuracy"], slots[2]["accuracy"])
    results["service_cost"] = cost
    rows = [
        [f"--pack 1 ({args.trials} head-only)", pack[1]["trials_per_s"], 1.0, "-"],
        [
            f"--pack {args.pack}",
            pack[args.pack]["trials_per_s"],
            results["pack_speedup"],
            results["pack_accuracy"]["max_abs_difference"],
        ],
        [f"--slots 1 ({args.slot_trials} unfreeze 1)", slots[1]["trials_per_s"], 1.0, "-"],
        [
            "--slots 2",
            slots[2]["trials_per_s"],
            results["slots_speedup"],
            results["slots_accuracy"]["max_abs_difference"],
        ],
    ]
    print(table(["run", "trials/s", "ratio", "max accuracy difference"], rows))
    print(
        table(
            ["service cost", "ms per trial"],
            [
                ["lease + complete", cost["single"]["ms_per_trial"]],
                [f"batch of {args.cost_count} + complete", cost["batch"]["ms_per_trial"]],
                ["ratio single / batch", cost["ratio_single_over_batch"]],
            ],
        )
    )
    write_results("packing", results, args)


if __name__ == "__main__":
    main()
