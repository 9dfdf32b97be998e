"""Search quality: TPE with Hyperband pruning against random search without pruning.

In-process Optuna studies on the built-in task (digits-cnn -> digits 5-9),
single objective accuracy; the objective is the engine's run_trial, whose
per-epoch validation accuracy goes to trial.report / trial.should_prune.
For every run (arm x seed) it counts the trials and the training time spent
until a trial reaches 95% (and 99%) of the best accuracy any run found.

    .venv/bin/python -m bench.search_quality [--tiny] [--seeds S] [--trials T] [--epochs E]

A run that never reaches the target counts with its whole budget (and
`reached` says how many runs did). Ratios are random / TPE: above 1 means
TPE with pruning needs less.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import optuna

from bench.harness import apply_threads, engine_assignment, parser, ratio, table, write_results
from workers.transfer import TrialPruned, run_trial

THRESHOLDS = (0.95, 0.99)
SEARCH_SPACE = {
    "lr": {"type": "float", "low": 1e-5, "high": 3e-1, "log": True},
    "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
    "head_depth": {"type": "int", "low": 1, "high": 3},
    "head_width": {"type": "int", "low": 16, "high": 256, "log": True},
    "activation": {"type": "categorical", "choices": ["relu", "gelu", "tanh"]},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "unfreeze_blocks": {"type": "int", "low": 0, "high": 3},
}


def suggest(trial: optuna.Trial) -> dict:
    params = {}
    for name, p in SEARCH_SPACE.items():
        if p["type"] == "float":
            params[name] = trial.suggest_float(name, p["low"], p["high"], log=p.get("log", False))
        elif p["type"] == "int":
            params[name] = trial.suggest_int(name, p["low"], p["high"], log=p.get("log", False))
        else:
            params[name] = trial.suggest_categorical(name, p["choices"])
    return params


def run_study(arm: str, seed: int, trials: int, epochs: int, dirs: Path) -> list[dict]:
    """One study; per trial its state, accuracy (None when pruned) and seconds."""
    if arm == "tpe_hyperband":
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True)
        pruner = optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=epochs, reduction_factor=3
        )
    else:
        sampler = optuna.samplers.RandomSampler(seed=seed)
        pruner = optuna.pruners.NopPruner()
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    log: list[dict] = []

    def objective(trial: optuna.Trial) -> float:
        epochs_ran = 0

        def report(epoch: int, val_accuracy: float) -> bool:
            nonlocal epochs_ran
            epochs_ran = epoch
            trial.report(val_accuracy, epoch)
            return trial.should_prune()

        assignment = engine_assignment(
            suggest(trial),
            number=trial.number,
            search_space=SEARCH_SPACE,
            budget={"epochs": epochs},
            seed=1000 * seed,  # training seed: this + trial number
        )
        started = time.perf_counter()
        try:
            result = run_trial(
                assignment,
                report,
                device="cpu",
                cache_dir=dirs / "cache",
                artifact_dir=dirs / "artifacts",
            )
        except TrialPruned:
            log.append(
                {
                    "state": "PRUNED",
                    "accuracy": None,
                    "seconds": time.perf_counter() - started,
                    "epochs": epochs_ran,
                }
            )
            raise optuna.TrialPruned() from None
        accuracy = result.values["accuracy"]
        log.append(
            {
                "state": "COMPLETE",
                "accuracy": accuracy,
                "seconds": time.perf_counter() - started,
                "epochs": epochs_ran,
            }
        )
        return accuracy

    study.optimize(objective, n_trials=trials)
    return log


def cost_to_reach(log: list[dict], target: float) -> dict:
    """Trials and seconds up to the first trial at or above target (the whole run if none)."""
    seconds = 0.0
    for index, entry in enumerate(log, start=1):
        seconds += entry["seconds"]
        if entry["accuracy"] is not None and entry["accuracy"] >= target:
            return {"reached": True, "trials": index, "seconds": seconds}
    return {"reached": False, "trials": len(log), "seconds": seconds}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=None, help="runs per arm (default 5)")
    p.add_argument("--trials", type=int, default=None, help="trials per run")
    p.add_argument("--epochs", type=int, default=None, help="epochs of a full trial")
    args = p.parse_args()
    apply_threads(args)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seeds = args.seeds or (2 if args.tiny else 5)
    trials = args.trials or (2 if args.tiny else 30)
    epochs = args.epochs or (1 if args.tiny else 6)
    arms = ("tpe_hyperband", "random_nopruning")

    runs: dict[str, list[list[dict]]] = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory(prefix="tf-bench-search-") as tmp:
        run_study("random_nopruning", 0, 1, 1, Path(tmp))  # warm-up: pretrain, load the data
        for seed in range(seeds):
            for arm in arms:  # interleaved, so that the machine's load hits both alike
                runs[arm].append(run_study(arm, seed, trials, epochs, Path(tmp)))

    best = max(
        e["accuracy"]
        for logs in runs.values()
        for log in logs
        for e in log
        if e["accuracy"] is not None
    )
    per_threshold = {}
    for threshold in THRESHOLDS:
        target = threshold * best
        arms_out = {}
        for arm in arms:
            costs = [cost_to_reach(log, target) for log in runs[arm]]
            arms_out[arm] = {
                "reached": sum(c["reached"] for c in costs),
                "runs": len(costs),
                "median_trials": statistics.median(c["trials"] for c in costs),
                "median_seconds": statistics.median(c["seconds"] for c in costs),
                "per_run": costs,
            }
        tpe, rnd = arms_out["tpe_hyperband"], arms_out["random_nopruning"]
        per_threshold[str(threshold)] = {
            "target_accuracy": target,
            "arms": arms_out,
            "ratio_trials_random_over_tpe": ratio(rnd["median_trials"], tpe["median_trials"]),
            "ratio_seconds_random_over_tpe": ratio(rnd["median_seconds"], tpe["median_seconds"]),
        }
    summary_arms = {
        arm: {
            "best_accuracy": statistics.median(
                max((e["accuracy"] or 0.0) for e in log) for log in runs[arm]
            ),
            "total_seconds_median": statistics.median(
                sum(e["seconds"] for e in log) for log in runs[arm]
            ),
            "pruned_fraction": sum(e["state"] == "PRUNED" for log in runs[arm] for e in log)
            / sum(len(log) for log in runs[arm]),
        }
        for arm in arms
    }
    results = {
        "config": {
            "seeds": seeds,
            "trials_per_run": trials,
            "epochs": epochs,
            "search_space": SEARCH_SPACE,
            "device": "cpu",
            "tpe": "TPESampler(seed, multivariate=True)",
            "hyperband": f"HyperbandPruner(min_resource=1, max_resource={epochs}, "
            "reduction_factor=3)",
        },
        "best_accuracy_any_run": best,
        "thresholds": per_threshold,
        "arms": summary_arms,
        "trials": runs,
    }
    write_results("search_quality", results, args)
    rows = []
    for threshold, out in per_threshold.items():
        for arm in arms:
            a = out["arms"][arm]
            rows.append(
                [
                    f"{float(threshold):.0%} of {best:.3f}",
                    arm,
                    f"{a['reached']}/{a['runs']}",
                    a["median_trials"],
                    a["median_seconds"],
                ]
            )
    print(table(["target", "arm", "reached", "median trials", "median train s"], rows))
    for threshold, out in per_threshold.items():
        print(
            f"{float(threshold):.0%}: random/TPE trials {out['ratio_trials_random_over_tpe']:.2f}x,"
            f" train time {out['ratio_seconds_random_over_tpe']:.2f}x"
        )
    for arm, s in summary_arms.items():
        print(
            f"{arm}: median best {s['best_accuracy']:.3f}, median run "
            f"{s['total_seconds_median']:.1f} s, pruned {s['pruned_fraction']:.0%}"
        )


if __name__ == "__main__":
    main()
