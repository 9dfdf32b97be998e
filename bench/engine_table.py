"""Accuracy, robustness and time per trial of the trial engine on the built-in task.

    python -m bench.engine_table [--epochs 5] [--repeats 3] [--device cpu] [--threads N]

Prints a Markdown table: three configurations of digits-cnn -> digits 5-9,
their test accuracy and robustness (the contract's default suite), and the
median wall time of a whole trial (fine-tune + scoring) with the frozen-feature
cache off and warm. Pretraining and data loading happen once before timing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.harness import engine_assignment
from workers.transfer import builtin, run_trial
from workers.transfer.features import FeatureCache

CONFIGS = {
    "linear probe (frozen backbone)": {"unfreeze_blocks": 0, "lr": 1e-2},
    "last 2 blocks + 2-layer gelu head": {
        "unfreeze_blocks": 2,
        "lr": 3e-3,
        "head_depth": 2,
        "activation": "gelu",
    },
    "full fine-tune, augment, L2-SP": {
        "unfreeze_blocks": 4,
        "lr": 3e-3,
        "augment_strength": 0.5,
        "l2sp_alpha": 0.01,
        "label_smoothing": 0.1,
    },
}
SPEC = {
    "objectives": [
        {"metric": "accuracy", "direction": "maximize"},
        {"metric": "robustness", "direction": "maximize"},
    ],
    "robustness": {
        "gaussian_sigma": [0.1, 0.3],
        "fgsm_eps": [0.03],
        "pgd": {"eps": 0.03, "steps": 5},
        "corruptions": ["blur", "contrast"],
    },
    "seed": 0,
}


def trial(params: dict, *, epochs: int, cache: FeatureCache | None, dirs, device) -> dict:
    """One trial; its result and its wall, CPU and fine-tuning seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = run_trial(
        engine_assignment(params, **SPEC, budget={"epochs": epochs}),
        lambda epoch, value: False,
        device=device,
        cache_dir=dirs[0],
        artifact_dir=dirs[1],
        feature_cache=cache,
    )
    return {
        "result": result,
        "wall": time.perf_counter() - wall,
        "cpu": time.process_time() - cpu,
        "train": result.attrs["time/train_s"],
    }


def median(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = args.cache_dir or Path(tmp) / "cache"
        dirs = (cache_dir, Path(tmp) / "artifacts")
        started = time.perf_counter()
        builtin.load_or_pretrain(cache_dir)
        pretrain_s = time.perf_counter() - started
        run = {"epochs": args.epochs, "dirs": dirs, "device": args.device}
        trial(CONFIGS["linear probe (frozen backbone)"], cache=None, **run)  # warm the process

        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device "
            f"{args.device}, {args.epochs} epochs, median of {args.repeats} trials; "
            "s = seconds per whole trial (fine-tune + test + robustness suite), "
            "wall / CPU; fine-tune = the training loop alone"
        )
        print(f"pretraining digits-cnn on digits 0-4 (once, cached): {pretrain_s:.1f} s\n")
        print(
            "| configuration | test accuracy | robustness | trial s, no cache "
            "| trial s, warm cache | fine-tune s, no cache | fine-tune s, warm cache |"
        )
        print("|---|---|---|---|---|---|---|")
        components = {}
        for name, params in CONFIGS.items():
            cache = FeatureCache()
            cacheable = params.get("augment_strength", 0) == 0
            if cacheable:
                trial(params, cache=cache, **run)  # fills the cache
            off, warm = [], []
            for _ in range(args.repeats):
                off.append(trial(params, cache=None, **run))
                if cacheable:
                    warm.append(trial(params, cache=cache, **run))
                    assert warm[-1]["result"].attrs["feature_cache"] == "hit"
            result = off[0]["result"]
            if warm:  # same seed: the cached path must score like the uncached one
                assert abs(warm[0]["result"].values["accuracy"] - result.values["accuracy"]) < 0.02
            na = "n/a (augmented)"
            cells = [
                f"{result.values['accuracy']:.3f}",
                f"{result.values['robustness']:.3f}",
                f"{median(off, 'wall'):.2f} / {median(off, 'cpu'):.2f}",
                f"{median(warm, 'wall'):.2f} / {median(warm, 'cpu'):.2f}" if warm else na,
                f"{median(off, 'train'):.2f}",
                f"{median(warm, 'train'):.2f}" if warm else na,
            ]
            print(f"| {name} | " + " | ".join(cells) + " |")
            components[name] = {
                k.removeprefix("robustness/"): v
                for k, v in result.attrs.items()
                if k.startswith("robustness/")
            }

        names = list(next(iter(components.values())))
        print("\n| configuration | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for name, values in components.items():
            print(f"| {name} | " + " | ".join(f"{values[n]:.3f}" for n in names) + " |")


if __name__ == "__main__":
    main()
