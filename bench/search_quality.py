"""Search quality: random search, TPE with Hyperband, and TPE with Hyperband warm-started.

In-process Optuna studies on a built-in task (default glyphs-cnn ->
builtin:glyphs: ten generated glyphs the source never saw, drawn thinner and
noisier, 60 labelled training and 50 validation images per class and 5,000 test
images; `--dataset builtin:digits-shifted` runs the digits task of earlier
figures), single objective accuracy; the objective is the
engine's prepare_trial / fine_tune / finish_trial (run_trial's steps), whose
per-epoch validation accuracy goes to trial.report / trial.should_prune.
Arms, per seed: random without pruning; TPE + Hyperband cold; TPE + Hyperband
warm-started with the best `top_k` configurations of a TPE + Hyperband study
run first on the related variant (--warm-from, another draw of the labelled
images), projected and enqueued as the service's warm start does; and the
same warm start with `observe`: TPE also reads the prior study's completed
trials as observations, through the service's own sampler wrapper
(service.warm_observe.ObservingSampler), so that it starts from them instead
of from random startup trials. For every run it counts the trials and the
training time spent until a trial reaches 95% (and 99%) of the best accuracy any
run found; the prior study's own time is reported apart (it is past work the
warm start reuses).

    .venv/bin/python -m bench.search_quality [--tiny] [--seeds S] [--first-seed F]
        [--trials T] [--epochs E] [--dataset D] [--warm-from D] [--cache-dir DIR]
        [--jobs J]
    .venv/bin/python -m bench.search_quality --combine A.json B.json   # seeds of both

Training time is the engine's fine_tune (up to the epoch that pruned a trial),
without loading the data and model or scoring the test split, as the CPU time of
its process (one torch thread unless --threads): what it takes on a core of its
own, which another process's load does not inflate as it does the wall time
(doubled beside a second benchmark). Epochs trained are reported too: a seed's
trials, and so its epochs, do not depend on the machine. A run that never
reaches the target counts with its whole budget (and `reached` says how many
runs did). Ratios are training time of one arm over another: below 1 means the
first needs less. `discrimination` is the task's own measurement: the median
accuracy of the random arm's completed trials over the best accuracy any run
found. `best_configuration_seed_spread` trains the best trial's configuration
again with 8 other training seeds: how much of the best accuracy is the
configuration and how much a lucky seed.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import optuna
from optuna.storages import BaseStorage

from bench.harness import (
    apply_threads,
    engine_assignment,
    full_trial,
    parser,
    ratio,
    table,
    write_results,
)
from service.warm_observe import ObservedSource, ObservingSampler, observations
from service.warm_start import WARM_START_ATTR, project_params
from tunefleet.spec import StudySpec
from workers.transfer import TrialPruned
from workers.transfer.features import FEATURES
from workers.transfer.train import fine_tune
from workers.transfer.trial import finish_trial, prepare_trial

THRESHOLDS = (0.95, 0.99)
ARMS = ("random_nopruning", "tpe_hyperband", "tpe_hyperband_warm", "tpe_hyperband_warm_observe")
WARM_ARMS = ("tpe_hyperband_warm", "tpe_hyperband_warm_observe")
TOP_K = 5
SOURCE_FOR = {"builtin:glyphs": "builtin:glyphs-cnn", "builtin:glyphs-s1": "builtin:glyphs-cnn"}
# Random trials before TPE models, over the whole study: Hyperband hands the sampler a view
# of the asking trial's bracket, but Optuna's TPE reads trials through the study's
# _get_trials, which that view does not filter, so it models every bracket's trials.
# Optuna's default is 10, a third of a 30-trial run; docs/benchmarks.md 4c measures 2 to 5.
TPE_STARTUP = 5
TRAIN_CLOCK = "process CPU time of fine_tune"
SPREAD_SEED = 999_000  # training seeds of the best configuration's repeats: no run's seeds
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


def run_study(
    arm: str,
    seed: int,
    trials: int,
    epochs: int,
    dirs: Path,
    *,
    dataset: str,
    source_model: str,
    warm: list[tuple[dict, str]] = (),
    observed: list[optuna.trial.FrozenTrial] = (),
    storage: BaseStorage | None = None,
    tpe_startup: int = TPE_STARTUP,
    min_resource: int = 1,
) -> tuple[list[dict], optuna.Study]:
    """One study and its log: per trial its state, accuracy (None when pruned), seconds,
    params and, for an enqueued one, where it came from. `warm` (params, origin) run
    first; TPE reads `observed` besides the study's own trials."""
    if arm.startswith("tpe_hyperband"):
        sampler = optuna.samplers.TPESampler(
            seed=seed, multivariate=True, n_startup_trials=tpe_startup
        )
        pruner = optuna.pruners.HyperbandPruner(
            min_resource=min_resource, max_resource=epochs, reduction_factor=3
        )
        if observed:
            sampler = ObservingSampler(sampler, list(observed))
    else:
        sampler = optuna.samplers.RandomSampler(seed=seed)
        pruner = optuna.pruners.NopPruner()
    study = optuna.create_study(
        storage=storage if storage is not None else optuna.storages.InMemoryStorage(),
        # Hyperband puts a trial in a bracket by a hash of the study's name and the trial's
        # number: one name per seed gives every arm the same brackets (a random name made
        # the warm arms prune the same enqueued trials differently from run to run).
        study_name=f"{dataset}-seed-{seed}",
        direction="maximize",
        sampler=sampler,
        pruner=pruner,
    )
    for params, origin in warm:
        study.enqueue_trial(params, user_attrs={WARM_START_ATTR: origin})
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
            dataset=dataset,
            source_model=source_model,
        )
        origin = trial.user_attrs.get(WARM_START_ATTR)
        entry = {"warm_start_from": origin}
        started = time.perf_counter()
        # run_trial's three steps, so that the training (fine_tune, pruned or not) is
        # timed apart from loading and from scoring the test split.
        prepared = prepare_trial(assignment, device="cpu", cache_dir=dirs / "cache")
        training = time.process_time()
        try:
            fit = fine_tune(
                prepared.model,
                prepared.data,
                prepared.cfg,
                report,
                feature_cache=FEATURES,
                cache_key=prepared.cache_key,
            )
        except TrialPruned:
            entry.update(
                state="PRUNED", accuracy=None, train_seconds=time.process_time() - training
            )
            log.append(_finished(entry, started, epochs_ran, trial.params))
            raise optuna.TrialPruned() from None
        entry["train_seconds"] = time.process_time() - training
        result = finish_trial(prepared, fit, artifact_dir=dirs / "artifacts")
        accuracy = result.values["accuracy"]
        entry.update(state="COMPLETE", accuracy=accuracy)
        log.append(_finished(entry, started, epochs_ran, trial.params))
        return accuracy

    study.optimize(objective, n_trials=trials)
    return log, study


def _finished(entry: dict, started: float, epochs: int, params: dict) -> dict:
    """A trial's log entry: `seconds` is the whole trial (load, train, score), `train_seconds`
    the fine-tuning alone (up to the epoch that pruned it)."""
    return {**entry, "seconds": time.perf_counter() - started, "epochs": epochs, "params": params}


def cost_to_reach(log: list[dict], target: float) -> dict:
    """Trials, training seconds and epochs trained up to the first trial at or above target
    (the whole run if none). A seed's trials and epochs do not depend on the machine's
    load; its seconds do, a little."""
    seconds, epochs = 0.0, 0
    for index, entry in enumerate(log, start=1):
        seconds += entry["train_seconds"]
        epochs += entry["epochs"]
        if entry["accuracy"] is not None and entry["accuracy"] >= target:
            return {"reached": True, "trials": index, "seconds": seconds, "epochs": epochs}
    return {"reached": False, "trials": len(log), "seconds": seconds, "epochs": epochs}


def seed_spread(
    params: dict, *, repeats: int, epochs: int, dirs: Path, dataset: str, source_model: str
) -> dict:
    """The best configuration trained again with other training seeds: how much of its
    accuracy is the configuration and how much the seed, against the 1% between 99% of the
    best and the best."""
    accuracies = []
    for number in range(repeats):
        assignment = engine_assignment(
            params,
            number=number,
            search_space=SEARCH_SPACE,
            budget={"epochs": epochs},
            seed=SPREAD_SEED,
            dataset=dataset,
            source_model=source_model,
        )
        accuracies.append(full_trial(assignment, dirs, device="cpu").values["accuracy"])
    return {
        "params": params,
        "accuracies": accuracies,
        "mean": statistics.mean(accuracies),
        "stdev": statistics.stdev(accuracies),
        "min": min(accuracies),
        "max": max(accuracies),
    }


def bench_spec() -> StudySpec:
    return StudySpec.model_validate(engine_assignment({}, search_space=SEARCH_SPACE)["spec"])


def warm_configurations(prior: list[dict], *, name: str, top_k: int = TOP_K) -> list:
    """The prior study's best completed configurations, projected and deduplicated as the
    service's warm start does: (params, "study/number"), best first."""
    spec = bench_spec()
    done = [(e["accuracy"], n, e["params"]) for n, e in enumerate(prior) if e["accuracy"]]
    out: list[tuple[dict, str]] = []
    seen: set[tuple] = set()
    for _, number, params in sorted(done, key=lambda d: -d[0]):
        projected = project_params(params, spec=spec)
        key = tuple(sorted(projected.items()))
        if projected and key not in seen:
            seen.add(key)
            out.append((projected, f"{name}/{number}"))
        if len(out) == top_k:
            break
    return out


def prior_observations(
    storage: BaseStorage, study: optuna.Study, *, name: str
) -> list[optuna.trial.FrozenTrial]:
    """The prior study's completed trials as observations, built by the service's own
    code (service.warm_observe.observations) from the study's storage."""
    source = ObservedSource(
        name=name,
        optuna_study_id=storage.get_study_id_from_name(study.study_name),
        objectives=[o.model_dump() for o in bench_spec().objectives],
        trials_before=len(study.trials),
    )
    return observations(storage, sources=[source], spec=bench_spec())


def run_seed(
    seed: int,
    *,
    trials: int,
    epochs: int,
    dirs: Path,
    dataset: str,
    warm_from: str,
    source_model: str,
    threads: int,
    tpe_startup: int = TPE_STARTUP,
    min_resource: int = 1,
) -> tuple[list[dict], int, dict[str, list[dict]]]:
    """One seed: the prior study on the related variant, then every arm on the task;
    returns the prior's log, how many observations it gave, and each arm's log."""
    import torch

    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # The past study on the related variant (another seed, so not a copy of the cold run).
    storage = optuna.storages.InMemoryStorage()
    prior, prior_study = run_study(
        "tpe_hyperband",
        100 + seed,
        trials,
        epochs,
        dirs,
        dataset=warm_from,
        source_model=source_model,
        storage=storage,
        tpe_startup=tpe_startup,
        min_resource=min_resource,
    )
    warm = warm_configurations(prior, name=f"prior-{seed}")
    observed = prior_observations(storage, prior_study, name=f"prior-{seed}")
    logs = {}
    for arm in ARMS:  # interleaved, so that the machine's load hits all alike
        logs[arm], _ = run_study(
            arm,
            seed,
            trials,
            epochs,
            dirs,
            dataset=dataset,
            source_model=source_model,
            warm=warm if arm in WARM_ARMS else (),
            observed=observed if arm == "tpe_hyperband_warm_observe" else (),
            tpe_startup=tpe_startup,
            min_resource=min_resource,
        )
    return prior, len(observed), logs


def threshold_costs(runs: dict[str, list[list[dict]]], best: float) -> dict:
    per_threshold = {}
    for threshold in THRESHOLDS:
        target = threshold * best
        arms_out = {}
        for arm, logs in runs.items():
            costs = [cost_to_reach(log, target) for log in logs]
            arms_out[arm] = {
                "reached": sum(c["reached"] for c in costs),
                "runs": len(costs),
                "median_trials": statistics.median(c["trials"] for c in costs),
                "median_seconds": statistics.median(c["seconds"] for c in costs),
                "median_epochs": statistics.median(c["epochs"] for c in costs),
                "per_run": costs,
            }
        rnd, cold = arms_out["random_nopruning"], arms_out["tpe_hyperband"]
        warm, observe = arms_out["tpe_hyperband_warm"], arms_out["tpe_hyperband_warm_observe"]
        per_threshold[str(threshold)] = {
            "target_accuracy": target,
            "arms": arms_out,
            "ratio_seconds_tpe_over_random": ratio(cold["median_seconds"], rnd["median_seconds"]),
            "ratio_seconds_warm_over_cold": ratio(warm["median_seconds"], cold["median_seconds"]),
            "ratio_trials_tpe_over_random": ratio(cold["median_trials"], rnd["median_trials"]),
            "ratio_trials_warm_over_cold": ratio(warm["median_trials"], cold["median_trials"]),
            "ratio_seconds_observe_over_cold": ratio(
                observe["median_seconds"], cold["median_seconds"]
            ),
            "ratio_trials_observe_over_cold": ratio(
                observe["median_trials"], cold["median_trials"]
            ),
            "ratio_epochs_tpe_over_random": ratio(cold["median_epochs"], rnd["median_epochs"]),
            "ratio_epochs_warm_over_cold": ratio(warm["median_epochs"], cold["median_epochs"]),
            "ratio_epochs_observe_over_cold": ratio(
                observe["median_epochs"], cold["median_epochs"]
            ),
        }
    return per_threshold


def summarise(
    config: dict,
    runs: dict[str, list[list[dict]]],
    priors: list[list[dict]],
    observed_counts: list[int],
    *,
    spreads: list[dict],
    wall: float,
) -> dict:
    """The results file's body: every run's log, and the figures measured on them against
    the best accuracy any run found."""
    best = max(
        e["accuracy"] for logs in runs.values() for log in logs for e in log if e["accuracy"]
    )
    random_accuracies = [
        e["accuracy"] for log in runs["random_nopruning"] for e in log if e["accuracy"] is not None
    ]
    discrimination = {
        "random_median_accuracy": statistics.median(random_accuracies),
        "best_accuracy_any_run": best,
        "ratio": statistics.median(random_accuracies) / best,
        "target": "<= 0.80",
    }
    summary_arms = {
        arm: {
            "best_accuracy": statistics.median(
                max((e["accuracy"] or 0.0) for e in log) for log in runs[arm]
            ),
            "total_seconds_median": statistics.median(
                sum(e["seconds"] for e in log) for log in runs[arm]
            ),
            "train_seconds_median": statistics.median(
                sum(e["train_seconds"] for e in log) for log in runs[arm]
            ),
            "pruned_fraction": sum(e["state"] == "PRUNED" for log in runs[arm] for e in log)
            / sum(len(log) for log in runs[arm]),
        }
        for arm in ARMS
    }
    return {
        "config": config,
        "wall_seconds": wall,
        "best_accuracy_any_run": best,
        "discrimination": discrimination,
        # One per run of the benchmark (several when results were combined).
        "best_configuration_seed_spread": spreads[0] if len(spreads) == 1 else spreads,
        "thresholds": threshold_costs(runs, best),
        "arms": summary_arms,
        "observations_per_run": observed_counts,
        "prior_train_seconds_median": statistics.median(
            sum(e["train_seconds"] for e in log) for log in priors
        ),
        "trials": runs,
        "priors": priors,
    }


def combine(paths: list[Path]) -> dict:
    """Results files of the same task and settings on other seeds, as one run of them all:
    the best any run found, the thresholds and every ratio measured over all their runs."""
    bodies = [json.loads(Path(path).read_text()) for path in paths]
    keys = (
        "dataset",
        "warm_from",
        "source_model",
        "trials_per_run",
        "epochs",
        "search_space",
        "tpe",
        "hyperband",
        "train_clock",
    )
    first = bodies[0]["config"]
    for path, body in zip(paths, bodies, strict=True):
        differ = [k for k in keys if body["config"].get(k) != first.get(k)]
        if differ:
            raise SystemExit(f"{path}: not the same benchmark ({', '.join(differ)} differ)")
    seeds = [
        seed
        for body in bodies
        for seed in range(
            body["config"]["first_seed"], body["config"]["first_seed"] + body["config"]["seeds"]
        )
    ]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"the files share seeds ({sorted(seeds)}): combine other seeds")
    config = {
        **first,
        "seeds": len(seeds),
        "seed_list": seeds,
        "combined_from": [str(p) for p in paths],
    }
    spreads = []
    for body in bodies:
        spread = body["best_configuration_seed_spread"]
        spreads.extend(spread if isinstance(spread, list) else [spread])
    return summarise(
        config,
        {arm: [log for body in bodies for log in body["trials"][arm]] for arm in ARMS},
        [prior for body in bodies for prior in body["priors"]],
        [n for body in bodies for n in body["observations_per_run"]],
        spreads=spreads,
        wall=sum(body["wall_seconds"] for body in bodies),
    )


def report(results: dict) -> None:
    """The summary table and the ratios, as the benchmark prints them."""
    per_threshold, summary_arms = results["thresholds"], results["arms"]
    best, discrimination = results["best_accuracy_any_run"], results["discrimination"]
    observed_counts = results["observations_per_run"]
    spreads = results["best_configuration_seed_spread"]
    rows = []
    for threshold, out in per_threshold.items():
        for arm in ARMS:
            a = out["arms"][arm]
            rows.append(
                [
                    f"{float(threshold):.0%} of {best:.3f}",
                    arm,
                    f"{a['reached']}/{a['runs']}",
                    a["median_trials"],
                    a["median_epochs"],
                    a["median_seconds"],
                ]
            )
    headers = ["target", "arm", "reached", "median trials", "median epochs", "median train s"]
    print(table(headers, rows))
    for threshold, out in per_threshold.items():
        print(
            f"{float(threshold):.0%}: TPE+HB/random train time "
            f"{out['ratio_seconds_tpe_over_random']:.2f}x (target <= 0.35), warm/cold "
            f"{out['ratio_seconds_warm_over_cold']:.2f}x, warm+observe/cold "
            f"{out['ratio_seconds_observe_over_cold']:.2f}x (target <= 0.30); epochs trained: "
            f"{out['ratio_epochs_tpe_over_random']:.2f}x, "
            f"{out['ratio_epochs_warm_over_cold']:.2f}x, "
            f"{out['ratio_epochs_observe_over_cold']:.2f}x"
        )
    print(f"observations given to the warm+observe arm's sampler per run: {observed_counts}")
    for arm, summary in summary_arms.items():
        print(
            f"{arm}: median best {summary['best_accuracy']:.3f}, median run "
            f"{summary['train_seconds_median']:.1f} s training "
            f"({summary['total_seconds_median']:.1f} s in all), "
            f"pruned {summary['pruned_fraction']:.0%}"
        )
    print(
        f"discrimination: random's median {discrimination['random_median_accuracy']:.3f} / "
        f"best {best:.3f} = {discrimination['ratio']:.2f} (target <= 0.80); "
        f"wall {results['wall_seconds']:.0f} s"
    )
    for spread in spreads if isinstance(spreads, list) else [spreads]:
        print(
            f"its best configuration over {len(spread['accuracies'])} other seeds: "
            f"{spread['mean']:.3f} on average, sd {spread['stdev']:.3f}, "
            f"{spread['min']:.3f}-{spread['max']:.3f}"
        )


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=None, help="runs per arm (default 5)")
    p.add_argument("--trials", type=int, default=None, help="trials per run")
    p.add_argument("--epochs", type=int, default=None, help="epochs of a full trial")
    p.add_argument(
        "--first-seed", type=int, default=0, help="seeds first-seed.. (another set of runs)"
    )
    p.add_argument("--dataset", default="builtin:glyphs", help="the task searched")
    p.add_argument(
        "--warm-from",
        default=None,
        help="the related variant the warm-started arm's prior study searched "
        "(default: the dataset's -s1 variant)",
    )
    p.add_argument(
        "--source-model",
        default=None,
        help="the source model (default: the built-in one the dataset belongs to)",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="a cache holding the pretrained built-in source models (copied; default: "
        "pretrain them in the run's own folder)",
    )
    p.add_argument(
        "--tpe-startup",
        type=int,
        default=TPE_STARTUP,
        help=f"TPE's random startup trials (default {TPE_STARTUP})",
    )
    p.add_argument("--min-resource", type=int, default=1, help="Hyperband's min_resource in epochs")
    p.add_argument("--jobs", type=int, default=1, help="seeds run side by side, one process each")
    p.add_argument(
        "--combine",
        nargs="+",
        type=Path,
        metavar="RESULTS",
        help="measure results files of other seeds (same task and settings) as one run: "
        "runs nothing",
    )
    args = p.parse_args()
    if args.combine:
        results = combine(args.combine)
        write_results("search_quality", results, args)
        report(results)
        return
    args.warm_from = args.warm_from or f"{args.dataset}-s1"
    args.source_model = args.source_model or SOURCE_FOR.get(args.dataset, "builtin:digits-cnn")
    apply_threads(args)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seeds = args.seeds or (2 if args.tiny else 5)
    trials = args.trials or (3 if args.tiny else 30)
    epochs = args.epochs or (1 if args.tiny else 8)

    runs: dict[str, list[list[dict]]] = {arm: [] for arm in ARMS}
    priors: list[list[dict]] = []
    observed_counts: list[int] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tf-bench-search-") as tmp:
        dirs = Path(tmp)
        if args.cache_dir is not None:
            shutil.copytree(args.cache_dir / "sources", dirs / "cache" / "sources")
        for dataset in (args.dataset, args.warm_from):  # warm-up: pretrain, load the data
            run_study(
                "random_nopruning", 0, 1, 1, dirs, dataset=dataset, source_model=args.source_model
            )
        task = {
            "trials": trials,
            "epochs": epochs,
            "dirs": dirs,
            "dataset": args.dataset,
            "warm_from": args.warm_from,
            "source_model": args.source_model,
            "threads": args.threads,
            "tpe_startup": args.tpe_startup,
            "min_resource": args.min_resource,
        }
        order = range(args.first_seed, args.first_seed + seeds)
        if args.jobs > 1:
            # One seed per process (spawned: a forked torch may hang); each seed's arms
            # still run in one process, one after the other.
            spawn = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(args.jobs, mp_context=spawn) as pool:
                done = list(pool.map(functools.partial(run_seed, **task), order))
        else:
            done = [run_seed(seed, **task) for seed in order]
        for prior, observed_count, logs in done:
            priors.append(prior)
            observed_counts.append(observed_count)
            for arm in ARMS:
                runs[arm].append(logs[arm])
        best_trial = max(
            (e for logs in runs.values() for log in logs for e in log if e["accuracy"]),
            key=lambda e: e["accuracy"],
        )
        spread = seed_spread(
            best_trial["params"],
            repeats=2 if args.tiny else 8,
            epochs=epochs,
            dirs=dirs,
            dataset=args.dataset,
            source_model=args.source_model,
        )
    wall = time.perf_counter() - started
    config = {
        "dataset": args.dataset,
        "warm_from": args.warm_from,
        "source_model": args.source_model,
        "top_k": TOP_K,
        "seeds": seeds,
        "first_seed": args.first_seed,
        "jobs": args.jobs,
        "trials_per_run": trials,
        "epochs": epochs,
        "search_space": SEARCH_SPACE,
        "device": "cpu",
        "train_clock": TRAIN_CLOCK,
        "tpe": f"TPESampler(seed, multivariate=True, n_startup_trials={args.tpe_startup})",
        "hyperband": f"HyperbandPruner(min_resource={args.min_resource}, "
        f"max_resource={epochs}, reduction_factor=3)",
    }
    results = summarise(config, runs, priors, observed_counts, spreads=[spread], wall=wall)
    write_results("search_quality", results, args)
    report(results)


if __name__ == "__main__":
    main()
