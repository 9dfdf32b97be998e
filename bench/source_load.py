"""Source load: building a backbone with its weights, initialised first (as before) or not.

For each model, in one process, alternating the two ways `--repeats` times: the
seconds to build the classifier-less model and load its weights with the random
initialisation first (`initialise=True`, what the worker did before deferred_init)
and without it (the worker's path now), their medians and the ratio old / new. The
weights are random, in memory for torchvision and in a safetensors file for timm
(read in both ways); downloading and the chain check that follows are left out.

    .venv/bin/python -m bench.source_load [--tiny] [--repeats N] [--models URI ...]

--tiny builds small models once each, in seconds (CI).
"""

from __future__ import annotations

import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.harness import apply_threads, parser, ratio, table, write_results
from workers.transfer import backbones, sources

FULL = [
    "torchvision:resnet50",
    "torchvision:regnet_y_16gf",
    "torchvision:regnet_y_32gf",
    "torchvision:vit_b_16",
    "torchvision:swin_t",
    "torchvision:convnext_tiny",
    "torchvision:googlenet",
    "torchvision:inception_v3",
    "torchvision:efficientnet_b0",
    "timm:resnet50",
    "timm:convnext_tiny",
    "timm:vit_small_patch16_224",
]
TINY = ["torchvision:resnet18", "torchvision:squeezenet1_1", "timm:test_resnet", "timm:test_vit"]


def loader(uri: str, folder: Path) -> Callable[[bool], torch.nn.Module]:
    """initialise -> the model built and loaded the worker's way, random weights."""
    family, _, name = uri.partition(":")
    torch.manual_seed(0)
    if family == "torchvision":
        import torchvision

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # GoogLeNet's, Inception's notice
            state = torchvision.models.get_model(name, weights=None).state_dict()
        return lambda initialise: sources.headless_torchvision(
            uri, name, state, initialise=initialise
        )[0]
    import timm
    from safetensors.torch import save_file

    path = folder / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model(name).state_dict().items()}, path)
    return lambda initialise: backbones.load_timm(
        uri, name, weights=str(path), cache_dir=folder, initialise=initialise
    )


def timed(load: Callable[[bool], torch.nn.Module], initialise: bool) -> float:
    started = time.perf_counter()
    model = load(initialise)
    seconds = time.perf_counter() - started
    del model
    return seconds


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=None, help="builds of each kind a model")
    p.add_argument("--models", nargs="*", default=None, help="torchvision:<arch> or timm:<name>")
    args = p.parse_args()
    apply_threads(args)
    models = args.models or (TINY if args.tiny else FULL)
    repeats = args.repeats or (1 if args.tiny else 3)
    rows, out = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for uri in models:
            load = loader(uri, Path(tmp))
            timed(load, False)  # the first build imports and warms caches: not counted
            old, new = [], []
            for _ in range(repeats):
                old.append(timed(load, True))
                new.append(timed(load, False))
            result: dict[str, Any] = {
                "initialised_s": old,
                "deferred_s": new,
                "median_initialised_s": statistics.median(old),
                "median_deferred_s": statistics.median(new),
            }
            result["speedup"] = ratio(result["median_initialised_s"], result["median_deferred_s"])
            out[uri] = result
            rows.append(
                [
                    uri,
                    result["median_initialised_s"],
                    result["median_deferred_s"],
                    f"{result['speedup']:.2f}x",
                ]
            )
    print(table(["model", "initialised s", "deferred s", "old / new"], rows))
    write_results(
        "source_load",
        {"config": {"models": models, "repeats": repeats}, "models": out},
        args,
    )


if __name__ == "__main__":
    main()
