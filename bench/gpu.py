"""GPU trial throughput: the engine's fine_tune on a torchvision ResNet-18, synthetic data.

Six variants of the same trial, each the engine's own training function
(workers.transfer.train.fine_tune) on a TransferModel built from a
torchvision ResNet-18 with every backbone stage frozen and a new linear head,
`--epochs` passes over `--images` training images and a validation pass per
epoch, run `--trials` times in a row as a worker would:

- fp32 / mixed precision (TrainConfig.mixed_precision: bf16 autocast where the
  GPU has it, else fp16 with a GradScaler);
- NCHW / channels_last (TrainConfig.channels_last; NHWC on CUDA only);
- without / with the frozen-feature cache (a FeatureCache shared by the
  variant's trials: the first one computes the backbone's features of the
  train and validation images, later ones train the head on them).

Reports images per second (training images over trial time: the model's move
to the device, the cache's fill in the first trial and validation included),
trials per minute (from the later trials), and torch.cuda.max_memory_allocated
per variant (also less what was resident before it started). Run through
bench/gpu.sh:

    bench/gpu.sh                 # one GPU, 224x224, within five minutes
    bench/gpu.sh --tiny          # the CPU, 32x32, a few batches (CI)

Random weights stand in for pretrained ones (nothing is downloaded); the
speed of a forward and backward pass does not depend on the weights' values.
"""

from __future__ import annotations

import itertools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.harness import apply_threads, parser, ratio, table, write_results
from workers.transfer.access import FileAccess
from workers.transfer.data import Dataset, InputSpec, Split
from workers.transfer.features import FeatureCache
from workers.transfer.models import InputAdapter, TransferModel, build_head
from workers.transfer.sources import SourceModel, load_source_model
from workers.transfer.train import TrainConfig, autocast_dtype, fine_tune
from workers.transfer.weights import save_weights

NUM_CLASSES = 10


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_dataset(images: int, size: int, seed: int = 0) -> Dataset:
    """uint8 images and labels, a validation quarter; the engine moves them to the device."""
    g = torch.Generator().manual_seed(seed)
    n_val = max(images // 4, 1)

    def split(n: int) -> Split:
        x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
        return Split(x=x, y=torch.randint(0, NUM_CLASSES, (n,), generator=g))

    return Dataset(
        uri=f"synthetic:{images}x{size}",
        classes=tuple(str(c) for c in range(NUM_CLASSES)),
        train=split(images),
        val=split(n_val),
        test=split(1),
        fingerprint=f"synthetic-{images}-{size}-{seed}",
    )


def resnet18_source(tmp_dir: Path) -> SourceModel:
    """torchvision:resnet18 through the engine's loader, from a file of random weights."""
    import torchvision

    path = tmp_dir / "resnet18-random.safetensors"
    save_weights(path, torchvision.models.resnet18(weights=None).state_dict(), {})
    # The weights file lies in the benchmark's own folder: that is its one model root.
    access = FileAccess(model_roots=(str(tmp_dir),))
    return load_source_model(
        "torchvision:resnet18", weights=str(path), cache_dir=tmp_dir, access=access
    )


def transfer_model(source: SourceModel, size: int) -> TransferModel:
    """The backbone frozen whole, a new Linear(512, 10) head; inputs kept at `size`."""
    stages, post = source.backbone()
    spec = source.input_spec
    head = build_head(
        source.feature_dim, NUM_CLASSES, depth=1, width=1, dropout=0.0, activation="relu"
    )
    adapter = InputAdapter(InputSpec(channels=3, size=size, mean=spec.mean, std=spec.std))
    return TransferModel(adapter, stages, post, head, unfreeze_blocks=0)


def run_trial(
    source: SourceModel,
    data: Dataset,
    cfg: TrainConfig,
    *,
    cache: FeatureCache | None,
    size: int,
) -> dict[str, Any]:
    """One trial through fine_tune; returns its seconds and what the feature cache did."""
    model = transfer_model(source, size)
    device = torch.device(cfg.device)
    synchronize(device)
    started = time.perf_counter()
    fit = fine_tune(
        model,
        data,
        cfg,
        lambda epoch, accuracy: False,
        feature_cache=cache,
        cache_key=(data.fingerprint,),
    )
    synchronize(device)
    return {"seconds": time.perf_counter() - started, "feature_cache": fit.feature_cache}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--device", default=None, help="cuda:0 or cpu (default: cuda when present)")
    p.add_argument("--images", type=int, default=None, help="training images (default 4096)")
    p.add_argument("--size", type=int, default=None, help="image side (default 224)")
    p.add_argument("--batch-size", type=int, default=None, help="default 128")
    p.add_argument("--epochs", type=int, default=None, help="epochs per trial (default 3)")
    p.add_argument("--trials", type=int, default=None, help="trials per variant (default 3)")
    args = p.parse_args()
    apply_threads(args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tiny = args.tiny
    images = args.images or (64 if tiny else 4096)
    size = args.size or (32 if tiny else 224)
    batch_size = args.batch_size or (16 if tiny else 128)
    epochs = args.epochs or (1 if tiny else 3)
    trials = args.trials or (2 if tiny else 3)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    data = synthetic_dataset(images, size)
    source = resnet18_source(Path(tempfile.mkdtemp(prefix="bench-gpu-")))
    amp_dtype = autocast_dtype(device)
    # name: (mixed precision, feature cache, channels_last)
    variants = {
        "fp32": (False, False, False),
        "amp": (True, False, False),
        "fp32+channels_last": (False, False, True),
        "amp+channels_last": (True, False, True),
        "fp32+cache": (False, True, False),
        "amp+cache": (True, True, False),
    }

    def config(mixed_precision: bool, channels_last: bool, seed: int, epochs: int) -> TrainConfig:
        return TrainConfig(
            lr=1e-3,
            optimizer="adamw",
            batch_size=batch_size,
            epochs=epochs,
            schedule="constant",
            seed=seed,
            device=str(device),
            mixed_precision=mixed_precision,
            channels_last=channels_last,
        )

    # One untimed pass per precision and layout: cuDNN's algorithm search, lazy CUDA init.
    warmup = synthetic_dataset(batch_size * 2, size, seed=1)
    for mixed, channels_last in itertools.product((False, True), (False, True)):
        run_trial(source, warmup, config(mixed, channels_last, 0, 1), cache=None, size=size)

    out: dict[str, dict[str, Any]] = {}
    for name, (mixed, cached, channels_last) in variants.items():
        resident = 0
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            resident = torch.cuda.memory_allocated(device)
        cache = FeatureCache() if cached else None
        runs = [
            run_trial(source, data, config(mixed, channels_last, t, epochs), cache=cache, size=size)
            for t in range(trials)
        ]
        seconds = [r["seconds"] for r in runs]
        later = seconds[1:] or seconds
        trained = images * epochs
        out[name] = {
            "precision": str(amp_dtype).removeprefix("torch.")
            if mixed and amp_dtype
            else "float32",
            "feature_cache": cached,
            "feature_cache_per_trial": [r["feature_cache"] for r in runs],
            "channels_last": channels_last,
            "trial_s": seconds,
            "first_trial_images_per_s": trained / seconds[0],
            "images_per_s": trained / statistics.median(later),
            "trials_per_min": 60 / statistics.median(later),
            "max_memory_allocated_mb": (
                torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
            ),
            "max_memory_above_resident_mb": (
                (torch.cuda.max_memory_allocated(device) - resident) / 2**20
                if device.type == "cuda"
                else None
            ),
        }
        print(f"{name}: {out[name]['images_per_s']:.0f} images/s", flush=True)

    results = {
        "config": {
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "model": "torchvision resnet18 (random weights), frozen; new Linear(512, 10) head",
            "trained_by": "workers.transfer.train.fine_tune",
            "images": images,
            "validation_images": len(data.val),
            "size": size,
            "batch_size": batch_size,
            "epochs": epochs,
            "trials_per_variant": trials,
            "amp_dtype": str(amp_dtype) if amp_dtype else None,
        },
        "variants": out,
        "speedup_amp": ratio(out["amp"]["images_per_s"], out["fp32"]["images_per_s"]),
        "speedup_cache_fp32": ratio(out["fp32+cache"]["images_per_s"], out["fp32"]["images_per_s"]),
        "speedup_cache_amp": ratio(out["amp+cache"]["images_per_s"], out["amp"]["images_per_s"]),
        "speedup_channels_last_fp32": ratio(
            out["fp32+channels_last"]["images_per_s"], out["fp32"]["images_per_s"]
        ),
        "speedup_channels_last_amp": ratio(
            out["amp+channels_last"]["images_per_s"], out["amp"]["images_per_s"]
        ),
    }
    write_results("gpu", results, args)
    print(
        table(
            ["variant", "images/s", "first trial images/s", "trials/min", "max memory MiB"],
            [
                [
                    name,
                    v["images_per_s"],
                    v["first_trial_images_per_s"],
                    v["trials_per_min"],
                    v["max_memory_allocated_mb"]
                    if v["max_memory_allocated_mb"] is not None
                    else "n/a (cpu)",
                ]
                for name, v in out.items()
            ],
        )
    )


if __name__ == "__main__":
    main()
