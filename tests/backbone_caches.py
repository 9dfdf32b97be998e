"""Tiny timm and torchvision models with random weights, written where each library
caches its downloads, so that tests load `pretrained` weights with no network."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TIMM_MODEL = "test_resnet"  # timm's own tiny test model: 160 px input, mean 0.5
TORCHVISION_MODEL = "mobilenet_v3_small"
REVISION = "0" * 40


def write_timm_cache(cache_dir: Path, name: str = TIMM_MODEL) -> Path:
    """models--timm--<name>.<tag>/snapshots/<rev>/model.safetensors, as the hub lays it out."""
    import timm
    import torch
    from safetensors.torch import save_file
    from timm.models import get_pretrained_cfg

    repo = get_pretrained_cfg(name).hf_hub_id
    folder = cache_dir / "huggingface" / "hub" / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "snapshots" / REVISION).mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(REVISION)
    torch.manual_seed(0)
    model = timm.create_model(name)  # random weights, the 1000-class head included
    path = folder / "snapshots" / REVISION / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def write_torchvision_cache(cache_dir: Path, arch: str = TORCHVISION_MODEL) -> Path:
    """torch/hub/checkpoints/<file of the DEFAULT weights' URL>, as torch.hub lays it out."""
    import torch
    import torchvision

    weights = torchvision.models.get_model_weights(arch).DEFAULT
    path = cache_dir / "torch" / "hub" / "checkpoints" / Path(weights.url).name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.get_model(arch, weights=None).state_dict(), path)
    return path


def write_imagefolder(root: Path, *, classes: int = 3, per_class: int = 6) -> Path:
    """Grayscale PNGs of different sizes, one brightness band per class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = 24 + 4 * (i % 3), 32
            pixels = rng.integers(c * 80, c * 80 + 60, size=(h, w), dtype=np.uint8)
            Image.fromarray(pixels, mode="L").save(root / f"class{c}" / f"{i}.png")
    return root
