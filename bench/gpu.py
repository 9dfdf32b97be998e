"""GPU trial throughput: a torchvision ResNet-18 head fine-tune on synthetic data.

Six variants of the same trial (frozen ResNet-18 backbone, new linear head,
`--epochs` passes over `--images` training images and a validation pass per
epoch), each run `--trials` times in a row as a worker would:

- fp32 / mixed precision (bf16 autocast where the GPU has it, else fp16 with a
  GradScaler: the engine's rule, workers.transfer.train.autocast_dtype);
- NCHW / channels_last (NHWC) memory format for the backbone;
- without / with the frozen-feature cache (backbone features of the train and
  validation images computed once, by the first trial; later trials train the
  head on them).

Reports images per second (training images over training time, the cache's
fill included in the first trial), trials per minute (from the later trials),
and torch.cuda.max_memory_allocated per variant (also less what was resident
before the variant started: the images and the backbone). Run through bench/gpu.sh:

    bench/gpu.sh                 # one GPU, 224x224, within five minutes
    bench/gpu.sh --tiny          # the CPU, 32x32, a few batches (CI)

Random weights stand in for pretrained ones (nothing is downloaded); the
speed of a forward and backward pass does not depend on the weights' values.
"""

from __future__ import annotations

import itertools
import statistics
import time
from typing import Any

import torch
from torch import nn

from bench.harness import apply_threads, parser, ratio, table, write_results
from workers.transfer.train import autocast_dtype

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NUM_CLASSES = 10


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SyntheticData:
    """uint8 images on the device when it is a GPU (they fit), labels, a validation quarter."""

    def __init__(self, images: int, size: int, device: torch.device, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        n_val = max(images // 4, 1)
        x = torch.randint(0, 256, (images + n_val, 3, size, size), dtype=torch.uint8, generator=g)
        y = torch.randint(0, NUM_CLASSES, (images + n_val,), generator=g)
        if device.type == "cuda":
            x = x.pin_memory().to(device, non_blocking=True)
        self.train_x, self.val_x = x[:images], x[images:]
        self.train_y, self.val_y = y[:images].to(device), y[images:].to(device)


class Backbone(nn.Module):
    """ResNet-18 without its classifier, with the ImageNet normalisation in front;
    with `channels_last`, weights and activations in NHWC (what tensor cores prefer)."""

    def __init__(self, *, channels_last: bool = False) -> None:
        super().__init__()
        self.channels_last = channels_last
        import torchvision

        model = torchvision.models.resnet18(weights=None)
        model.fc = nn.Identity()
        self.body = model.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x_uint8: torch.Tensor) -> torch.Tensor:
        x = (x_uint8.float().div_(255) - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.body(x)


def batches(n: int, batch_size: int, device: torch.device, generator: torch.Generator | None):
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size].to(device)


@torch.no_grad()
def features(backbone: Backbone, x: torch.Tensor, batch_size: int, device, dtype) -> torch.Tensor:
    out = []
    for idx in batches(len(x), batch_size, device, None):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out.append(backbone(x[idx.to(x.device)].to(device, non_blocking=True)).float())
    return torch.cat(out)


def run_trial(
    backbone: Backbone,
    data: SyntheticData,
    *,
    epochs: int,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype | None,
    cache: dict | None,
    seed: int,
) -> dict[str, float]:
    """One head fine-tune; returns its seconds and how many of them filled the cache."""
    synchronize(device)
    started = time.perf_counter()
    fill_s = 0.0
    if cache is not None and not cache:
        cache["train"] = features(backbone, data.train_x, batch_size, device, dtype)
        cache["val"] = features(backbone, data.val_x, batch_size, device, dtype)
        synchronize(device)
        fill_s = time.perf_counter() - started

    torch.manual_seed(seed)
    head = nn.Linear(512, NUM_CLASSES).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    loss_fn = nn.CrossEntropyLoss()
    shuffle = torch.Generator().manual_seed(seed)

    def forward(x: torch.Tensor, which: str, idx: torch.Tensor) -> torch.Tensor:
        if cache is not None:
            return head(cache[which][idx])
        with torch.no_grad():
            h = backbone(x[idx.to(x.device)].to(device, non_blocking=True))
        return head(h)

    for _ in range(epochs):
        head.train()
        for idx in batches(len(data.train_y), batch_size, device, shuffle):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = forward(data.train_x, "train", idx)
            loss = loss_fn(logits.float(), data.train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        head.eval()
        correct = 0
        with torch.no_grad():
            for idx in batches(len(data.val_y), batch_size, device, None):
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    logits = forward(data.val_x, "val", idx)
                correct += (logits.argmax(1) == data.val_y[idx]).sum()
        correct.item()  # the epoch's accuracy reaches the host, as a pruner would need it
    synchronize(device)
    return {"seconds": time.perf_counter() - started, "cache_fill_s": fill_s}


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

    data = SyntheticData(images, size, device)
    backbones = {
        False: Backbone().to(device),
        True: Backbone(channels_last=True).to(device, memory_format=torch.channels_last),
    }
    amp_dtype = autocast_dtype(device)
    # name: (autocast dtype, feature cache, channels_last)
    variants = {
        "fp32": (None, False, False),
        "amp": (amp_dtype, False, False),
        "fp32+channels_last": (None, False, True),
        "amp+channels_last": (amp_dtype, False, True),
        "fp32+cache": (None, True, False),
        "amp+cache": (amp_dtype, True, False),
    }
    # One untimed pass per precision and layout: cuDNN's algorithm search, lazy CUDA init.
    for dtype, channels_last in itertools.product({None, amp_dtype}, (False, True)):
        run_trial(
            backbones[channels_last],
            SyntheticData(batch_size * 2, size, device, seed=1),
            epochs=1,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            cache=None,
            seed=0,
        )

    out: dict[str, dict[str, Any]] = {}
    for name, (dtype, cached, channels_last) in variants.items():
        resident = 0
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            resident = torch.cuda.memory_allocated(device)  # the images and the backbone
        cache: dict | None = {} if cached else None
        runs = [
            run_trial(
                backbones[channels_last],
                data,
                epochs=epochs,
                batch_size=batch_size,
                device=device,
                dtype=dtype,
                cache=cache,
                seed=t,
            )
            for t in range(trials)
        ]
        seconds = [r["seconds"] for r in runs]
        later = seconds[1:] or seconds
        trained = images * epochs
        out[name] = {
            "precision": str(dtype).removeprefix("torch.") if dtype else "float32",
            "feature_cache": cached,
            "channels_last": channels_last,
            "trial_s": seconds,
            "cache_fill_s": runs[0]["cache_fill_s"],
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
            "images": images,
            "validation_images": len(data.val_y),
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
