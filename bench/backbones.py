"""Backbones: training throughput of real architectures through the trial engine.

For each architecture, with random weights saved as a local file (throughput does
not depend on the weights' values), on a generated image folder at the backbone's
own input size:

- images/s of a head-only trial (unfreeze_blocks=0) without the feature cache,
- images/s of the same trial with a warm frozen-feature cache, and the speed-up,
- images/s of an unfreeze-1 trial (the top stage trains),
- peak memory (GPU: torch's peak allocation; CPU: the process's peak RSS so far).

    .venv/bin/python -m bench.backbones [--tiny] [--device cuda] [--images N] [--epochs E]

--tiny runs timm's own tiny test models (160 px) on a few images, in seconds.
"""

from __future__ import annotations

import resource
import tempfile
from pathlib import Path
from typing import Any

import torch

from bench.harness import (
    apply_threads,
    engine_assignment,
    full_trial,
    parser,
    ratio,
    table,
    write_results,
)
from workers.transfer.access import FileAccess
from workers.transfer.features import FeatureCache

FULL = [
    "timm:resnet50",
    "timm:convnext_tiny",
    "timm:efficientnet_b0",
    "timm:vit_small_patch16_224",
]
TINY = ["timm:test_resnet", "timm:test_convnext", "timm:test_efficientnet", "timm:test_vit"]


def random_weights(uri: str, folder: Path) -> Path:
    """The architecture with random weights, saved as safetensors."""
    import timm
    from safetensors.torch import save_file

    name = uri.partition(":")[2]
    torch.manual_seed(0)
    model = timm.create_model(name)
    path = folder / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def image_folder(root: Path, *, images: int, size: int) -> Path:
    """Two classes of random RGB images at `size` px."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(images):
        folder = root / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_trial(
    uri: str,
    weights: Path,
    data: Path,
    dirs: Path,
    *,
    unfreeze: int,
    epochs: int,
    device: str,
    cache: FeatureCache | None,
) -> dict[str, Any]:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    assignment = engine_assignment(
        {"unfreeze_blocks": unfreeze, "batch_size": 32},
        source_model=uri,
        source_weights=str(weights),
        dataset=f"imagefolder:{data}",
        budget={"epochs": epochs},
    )
    result = full_trial(
        assignment,
        dirs,
        device=device,
        feature_cache=cache,
        # The weights and the image folder lie in the benchmark's own folders.
        access=FileAccess(data_roots=(str(data),), model_roots=(str(dirs),)),
    )
    seen = result.attrs["train_size"] * result.attrs["epochs_ran"]
    return {
        "images_per_s": seen / result.attrs["time/train_s"],
        "train_s": result.attrs["time/train_s"],
        "peak_mb": peak_memory_mb(device),
        "stages": result.attrs["backbone_stages"],
    }


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--images", type=int, default=None, help="images in the folder")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--models", nargs="*", default=None, help="source model URIs (timm:...)")
    args = p.parse_args()
    apply_threads(args)
    models = args.models or (TINY if args.tiny else FULL)
    images = args.images or (12 if args.tiny else 256)
    epochs = args.epochs or (1 if args.tiny else 2)
    rows, out = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = Path(tmp)
        for uri in models:
            weights = random_weights(uri, dirs)
            size = 160 if args.tiny else 224
            data = image_folder(dirs / f"images-{size}", images=images, size=size)
            kwargs = {"epochs": epochs, "device": args.device}
            head = one_trial(uri, weights, data, dirs, unfreeze=0, cache=None, **kwargs)
            cache = FeatureCache()
            one_trial(uri, weights, data, dirs, unfreeze=0, cache=cache, **kwargs)  # fills it
            cached = one_trial(uri, weights, data, dirs, unfreeze=0, cache=cache, **kwargs)
            top = one_trial(uri, weights, data, dirs, unfreeze=1, cache=None, **kwargs)
            out[uri] = {
                "head_only": head,
                "head_only_cached": cached,
                "unfreeze_1": top,
                "feature_cache_speedup": ratio(head["train_s"], cached["train_s"]),
            }
            rows.append(
                [
                    uri,
                    f"{head['images_per_s']:.1f}",
                    f"{cached['images_per_s']:.1f}",
                    f"{out[uri]['feature_cache_speedup']:.1f}x",
                    f"{top['images_per_s']:.1f}",
                    f"{max(head['peak_mb'], top['peak_mb']):.0f}",
                ]
            )
    print(
        table(
            [
                "model",
                "head img/s",
                "head+cache img/s",
                "cache speed-up",
                "unfreeze-1 img/s",
                "peak MB",
            ],
            rows,
        )
    )
    write_results(
        "backbones",
        {
            "config": {"models": models, "images": images, "epochs": epochs, "device": args.device},
            "models": out,
        },
        args,
    )


if __name__ == "__main__":
    main()
