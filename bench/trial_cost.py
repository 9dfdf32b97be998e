"""Trial cost: the engine's fine-tuning of the built-in task against a plain PyTorch loop.

The plain loop below trains the same model (the pretrained digits CNN with a
new linear head, the same frozen stages), on the same splits, for the same
epochs and batch size, with the same optimizer and schedule; it checks
validation accuracy once per epoch and test accuracy at the end, as any
hand-written loop would. Both run warm (source model and data loaded, as in a
worker after its first trial); the cold first trial is reported apart.

    .venv/bin/python -m bench.trial_cost [--tiny] [--repeats R] [--epochs E]

Reports the engine's overhead ratio (engine / plain, no feature cache) and the
frozen-feature cache's speed-up (engine without cache / engine with a warm
cache) for a head-only trial, and the overhead for a trial that fine-tunes the
last backbone stage(s).
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from bench.harness import (
    apply_threads,
    engine_assignment,
    full_trial,
    parser,
    ratio,
    summarize,
    table,
    write_results,
)
from workers.transfer import builtin
from workers.transfer.builtin_tasks import DIGITS_MEAN, DIGITS_STD
from workers.transfer.data import Dataset, load_dataset
from workers.transfer.features import FeatureCache
from workers.transfer.sources import DIGITS_INPUT

SOURCE = "builtin:digits-cnn"
DATASET = "builtin:digits-5to9"
LR = 1e-3
BATCH_SIZE = 64


def engine_trial(
    epochs: int, unfreeze: int, dirs: Path, feature_cache: FeatureCache | None
) -> tuple[float, float]:
    """Seconds of one run_trial and its test accuracy."""
    assignment = engine_assignment(
        {"unfreeze_blocks": unfreeze, "lr": LR, "batch_size": BATCH_SIZE},
        source_model=SOURCE,
        dataset=DATASET,
        budget={"epochs": epochs},
    )
    started = time.perf_counter()
    result = full_trial(assignment, dirs, device="cpu", feature_cache=feature_cache)
    return time.perf_counter() - started, result.values["accuracy"]


def plain_model(state: dict, unfreeze: int) -> tuple[nn.Module, list[nn.Module]]:
    """The digits CNN with its weights, a new 5-class head, the first stages frozen."""
    model = builtin.DigitsCNN()
    model.load_state_dict(state)
    model.fc = nn.Linear(model.fc.in_features, 5)
    stages = [model.stem, model.block1, model.block2, model.block3]
    frozen = stages[: len(stages) - unfreeze] if unfreeze else stages
    for module in frozen:
        module.requires_grad_(False)
    return model, frozen


def plain_trial(epochs: int, unfreeze: int, state: dict, data: Dataset) -> tuple[float, float]:
    """Seconds of the hand-written loop and its test accuracy."""
    started = time.perf_counter()
    torch.manual_seed(0)
    model, frozen = plain_model(state, unfreeze)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=LR)
    total_steps = epochs * math.ceil(len(data.train) / BATCH_SIZE)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    )
    loss_fn = nn.CrossEntropyLoss()

    def normalise(x: torch.Tensor) -> torch.Tensor:
        return (x - DIGITS_MEAN) / DIGITS_STD

    def evaluate(x: torch.Tensor, y: torch.Tensor) -> float:
        model.eval()
        with torch.no_grad():
            return (model(normalise(x)).argmax(1) == y).float().mean().item()

    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        model.train()
        for module in frozen:
            module.eval()  # frozen batch norm keeps its statistics
        order = torch.randperm(len(data.train), generator=generator)
        for start in range(0, len(order), BATCH_SIZE):
            idx = order[start : start + BATCH_SIZE]
            loss = loss_fn(model(normalise(data.train.x[idx])), data.train.y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        evaluate(data.val.x, data.val.y)
    accuracy = evaluate(data.test.x, data.test.y)
    return time.perf_counter() - started, accuracy


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=None, help="timed trials per variant")
    p.add_argument("--epochs", type=int, default=None, help="epochs per trial")
    args = p.parse_args()
    apply_threads(args)
    repeats = args.repeats or (1 if args.tiny else 9)
    epochs = args.epochs or (1 if args.tiny else 10)

    with tempfile.TemporaryDirectory(prefix="tf-bench-cost-") as tmp:
        dirs = Path(tmp)
        cache = FeatureCache()
        cold_s, _ = engine_trial(epochs, 0, dirs, cache)  # pretrains the source, loads data
        state, _ = builtin.load_or_pretrain(dirs / "cache")
        data = load_dataset(DATASET, DIGITS_INPUT)

        variants = {
            "plain_head": lambda: plain_trial(epochs, 0, state, data),
            "engine_head_nocache": lambda: engine_trial(epochs, 0, dirs, None),
            "engine_head_cache": lambda: engine_trial(epochs, 0, dirs, cache),
            "plain_finetune1": lambda: plain_trial(epochs, 1, state, data),
            "engine_finetune1_nocache": lambda: engine_trial(epochs, 1, dirs, None),
            "engine_finetune1_cache": lambda: engine_trial(epochs, 1, dirs, cache),
        }
        for run in variants.values():
            run()  # warm-up: first-call costs of each path
        times: dict[str, list[float]] = {name: [] for name in variants}
        accuracy: dict[str, float] = {}
        # Interleaved, so that drift in the machine's load hits every variant alike.
        for _ in range(repeats):
            for name, run in variants.items():
                seconds, acc = run()
                times[name].append(seconds)
                accuracy[name] = acc

    median = {name: statistics.median(t) for name, t in times.items()}
    results = {
        "config": {
            "source_model": SOURCE,
            "dataset": DATASET,
            "epochs": epochs,
            "batch_size": BATCH_SIZE,
            "lr": LR,
            "repeats": repeats,
            "train_size": len(data.train),
            "device": "cpu",
            "torch_threads": torch.get_num_threads(),
        },
        "cold_first_trial_s": cold_s,
        "trial_s": {name: summarize(t) for name, t in times.items()},
        "test_accuracy": accuracy,
        "overhead_ratio_head": ratio(median["engine_head_nocache"], median["plain_head"]),
        "overhead_ratio_head_cached": ratio(median["engine_head_cache"], median["plain_head"]),
        "overhead_ratio_finetune1": ratio(
            median["engine_finetune1_nocache"], median["plain_finetune1"]
        ),
        "overhead_ratio_finetune1_cached": ratio(
            median["engine_finetune1_cache"], median["plain_finetune1"]
        ),
        "feature_cache_speedup": ratio(median["engine_head_nocache"], median["engine_head_cache"]),
    }
    write_results("trial_cost", results, args)
    print(
        table(
            ["variant", "median s/trial", "p90 s/trial", "test accuracy"],
            [
                [name, median[name], summarize(times[name])["p90"], accuracy[name]]
                for name in variants
            ],
        )
    )
    print(
        f"engine/plain, head only: {results['overhead_ratio_head']:.2f}x "
        f"(with the feature cache: {results['overhead_ratio_head_cached']:.2f}x); "
        f"last stage fine-tuned: {results['overhead_ratio_finetune1']:.2f}x "
        f"(cached: {results['overhead_ratio_finetune1_cached']:.2f}x); "
        f"feature cache speed-up: {results['feature_cache_speedup']:.2f}x; "
        f"cold first trial {cold_s:.1f} s"
    )


if __name__ == "__main__":
    main()
