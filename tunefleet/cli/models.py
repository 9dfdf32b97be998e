"""`tunefleet prefetch` and `tunefleet models`: backbone weights for GPU nodes without internet.

`prefetch -f SPEC` downloads every pretrained weight the study may use into the
worker cache (TUNEFLEET_CACHE_DIR), laid out as timm and torchvision lay it out;
copy or mount that directory on the workers. `models` lists the names the spec
accepts and marks those whose pretrained weights are cached. Both import the
worker's engine (torch, timm), never the service.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tunefleet.cli.errors import CliError

FAMILIES = ("timm", "torchvision")


def _cache_dir(cache_dir: Path | None) -> Path:
    if cache_dir is not None:
        return cache_dir
    from workers.config import WorkerSettings

    return WorkerSettings().cache_dir


def prefetch(
    spec_file: Annotated[str, typer.Option("--file", "-f", help="Study spec (YAML or JSON).")],
    cache_dir: Annotated[
        Path | None, typer.Option(help="Worker cache to fill [TUNEFLEET_CACHE_DIR].")
    ] = None,
) -> None:
    """Download the pretrained weights a study needs into the worker cache."""
    from tunefleet.cli.specfile import read_spec
    from tunefleet.spec import StudySpec
    from workers.transfer.backbones import prefetch as fetch_one
    from workers.transfer.errors import SourceModelError

    spec = StudySpec.model_validate(read_spec(spec_file))
    cache = _cache_dir(cache_dir)
    console = Console()
    for uri in spec.source_models():
        _, weights = spec.source_of({"source_model": uri})
        try:
            path = fetch_one(uri, weights, cache_dir=cache)
        except SourceModelError as error:
            raise CliError(str(error)) from None
        if path is None:
            console.print(f"{uri}: nothing to fetch ({weights or 'built in'})")
        else:
            console.print(f"{uri}: {path}")
    console.print(f"cache: {cache}")


def models(
    pattern: Annotated[
        str | None, typer.Argument(help="Shell pattern on the name, e.g. 'resnet*'.")
    ] = None,
    family: Annotated[str | None, typer.Option(help="timm or torchvision (default both).")] = None,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Worker cache to look in [TUNEFLEET_CACHE_DIR].")
    ] = None,
) -> None:
    """List the backbones a spec may name, and whether their pretrained weights are cached."""
    from tunefleet._spec_backbones import TIMM_MODELS, TORCHVISION_WEIGHTS

    if family is not None and family not in FAMILIES:
        raise CliError(f"--family {family!r} is unknown; use timm or torchvision")
    names = [
        f"{fam}:{name}"
        for fam, known in (("timm", TIMM_MODELS), ("torchvision", TORCHVISION_WEIGHTS))
        if family in (None, fam)
        for name in sorted(known)
        if pattern is None or fnmatch.fnmatch(name, pattern)
    ]
    if not names:
        raise CliError(f"no {family or 'timm or torchvision'} model matches {pattern!r}")
    cache = _cache_dir(cache_dir)
    try:
        from workers.transfer.backbones import is_cached
    except ImportError:  # a machine without the worker extra: names only
        is_cached = None
    console = Console()
    for uri in names:
        cached = is_cached is not None and is_cached(uri, "pretrained", cache_dir=cache)
        console.print(f"{uri}\t{'cached' if cached else '-'}", highlight=False)
