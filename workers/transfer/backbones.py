"""timm and torchvision backbones by name, with their weights fetched the libraries' way.

Weights land under the worker's cache directory, laid out as each library lays
it out, so a cache filled by `tunefleet prefetch` on a machine with internet can
be copied or mounted on GPU nodes without it:

- timm: `<cache>/huggingface/hub` (the Hugging Face hub cache: the model's
  `timm/<name>.<tag>` repository, its `model.safetensors`), downloaded with
  `huggingface_hub.hf_hub_download`, whose calls time out;
- torchvision: `<cache>/torch/hub/checkpoints` (torch.hub's layout), downloaded
  by the weights' own `get_state_dict(check_hash=True)`, under a socket timeout
  since torch.hub sets none.

Offline (`HF_HUB_OFFLINE=1`, or `TUNEFLEET_OFFLINE=1`) only the cache is read; a
miss raises WeightsNotCached, one line naming the model and the prefetch command.

`unfreeze_blocks` counts blocks from the top. For torchvision a block comes from
the family's own module names (torchvision_blocks: ResNet layers, ViT encoder
layers, Swin stages, DenseNet dense blocks, ...). For timm it is one of timm's own coarse
parameter groups (`model.group_matcher(coarse=True)` through
`timm.models.group_parameters`): the stem first, then each stage (ResNet,
ConvNeXt, EfficientNet, MobileNet, RegNet, Swin) or each transformer block
(ViT, DeiT, CaiT), whatever the model's forward looks like. The old classifier
is gone (`num_classes=0`); whatever timm leaves unmatched between the blocks
and the classifier (ConvNeXt's `head.norm`, ViT's `fc_norm`, MobileNetV3's
`conv_head`) trains with the top block, as timm itself joins a final norm to
the last block (ViT's `norm`, EfficientNet's `conv_head`/`bn2`): a new head
reads features the top block's training is meant to adapt.

How a timm model runs its frozen part depends on its forward:

- a chain of its children (ResNet, ConvNeXt, EfficientNet, MobileNet, RegNet,
  Swin: `timm_stages` finds the stem, the children of the stage container
  `stages`, `blocks`, `layers` or `layer1..N`/`s1..N`, and the rest), whose
  stages are exactly timm's groups: each block is a stage, so the frozen
  prefix's output is cached by the frozen-feature cache and only the top stages
  run in training;
- anything else (ViT and other transformers with token or position
  embeddings, Inception): the model stays one module and the parameters of its
  frozen groups get `requires_grad=False`, their modules staying in eval mode.
  Head-only trials (`unfreeze_blocks` 0) still train on cached features; with
  one block or more the whole model runs in every step and only the resized,
  normalised input is cached.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

from torch import nn

from workers.transfer.data import InputSpec
from workers.transfer.errors import SourceModelError
from workers.transfer.weights import StateDict

PRETRAINED = "pretrained"
DOWNLOAD_TIMEOUT_S = float(os.environ.get("TUNEFLEET_DOWNLOAD_TIMEOUT_S", "30"))
_STAGE_NAMES = re.compile(r"^(layer|s|stage)(\d+)$")
_CONTAINERS = ("stages", "blocks", "layers")


class WeightsNotCached(SourceModelError):
    """Pretrained weights are not in the cache and this worker may not download them."""


def offline() -> bool:
    """True when the worker must not reach the network for weights."""
    return any(
        os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
        for var in ("HF_HUB_OFFLINE", "TUNEFLEET_OFFLINE")
    )


def hub_cache(cache_dir: Path) -> Path:
    return Path(cache_dir) / "huggingface" / "hub"


def torch_checkpoints(cache_dir: Path) -> Path:
    return Path(cache_dir) / "torch" / "hub" / "checkpoints"


def _not_cached(uri: str, where: Path) -> WeightsNotCached:
    return WeightsNotCached(
        f"{uri}: pretrained weights are not in {where} and this worker is offline; run "
        "`tunefleet prefetch -f SPEC` where the internet is reachable and copy its cache "
        "directory to TUNEFLEET_CACHE_DIR here (or mount it)"
    )


@contextlib.contextmanager
def _network_timeout(seconds: float) -> Iterator[None]:
    """A timeout for libraries that open sockets without one (torch.hub)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


# timm -------------------------------------------------------------------------


def timm_weights_file(uri: str, name: str, cache_dir: Path) -> Path:
    """The model's pretrained safetensors in the hub cache, downloaded if allowed."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        raise SourceModelError(
            f"{uri}: timm publishes no pretrained weights for it on the Hugging Face hub; "
            "give source_weights a local file"
        )
    repo, _, revision = repo.partition("@")
    try:
        path = hf_hub_download(
            repo,
            "model.safetensors",
            revision=revision or None,
            cache_dir=hub_cache(cache_dir),
            local_files_only=offline(),
            etag_timeout=DOWNLOAD_TIMEOUT_S,
        )
    except LocalEntryNotFoundError:
        raise _not_cached(uri, hub_cache(cache_dir)) from None
    except Exception as exc:  # the hub's errors: no network, no such file, ...
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SourceModelError(
            f"{uri}: cannot download its weights from {repo}: {reason}"
        ) from None
    return Path(path)


def load_timm(
    uri: str, name: str, *, weights: str, cache_dir: Path, initialise: bool = False
) -> nn.Module:
    """The timm model without its classifier (`num_classes=0`), weights loaded, built
    without the random initialisation they overwrite unless `initialise` (deferred_init)."""
    import timm

    from workers.transfer.deferred_init import build_from_weights
    from workers.transfer.weights import load_weights

    if weights == PRETRAINED:
        path = timm_weights_file(uri, name, cache_dir)

        def build() -> nn.Module:
            # timm's own loader: it applies the model's checkpoint filter and drops the
            # old classifier, as create_model(pretrained=True) does after a download.
            return timm.create_model(
                name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(path)}
            )

    else:
        state, _ = load_weights(Path(weights))

        def build() -> nn.Module:
            model = timm.create_model(name, pretrained=False, num_classes=0)
            classifier = model.pretrained_cfg.get("classifier") or ()
            prefixes = tuple(
                f"{c}." for c in ((classifier,) if isinstance(classifier, str) else classifier)
            )
            body = {k: v for k, v in state.items() if not k.startswith(prefixes)}
            _load_checked(model, body, uri)
            return model

    return build_from_weights(build, initialise=initialise).eval()


def timm_input(model: nn.Module) -> InputSpec:
    """Input size, normalisation, interpolation and crop from timm's data config."""
    from timm.data import resolve_data_config

    config = resolve_data_config({}, model=model)
    return InputSpec(
        channels=int(config["input_size"][0]),
        size=int(config["input_size"][-1]),
        mean=tuple(float(m) for m in config["mean"]),
        std=tuple(float(s) for s in config["std"]),
        interpolation=str(config.get("interpolation", "bilinear")),
        crop_pct=float(config.get("crop_pct", 1.0)),
    )


def timm_stages(model: nn.Module) -> tuple[list[nn.Module], nn.Module] | None:
    """Stem + stages + post when the model's forward is the chain of its children."""
    children = list(model.named_children())
    names = [n for n, _ in children]
    container = next((n for n in _CONTAINERS if n in names), None)
    if container is not None:
        i = names.index(container)
        stem, body, rest = children[:i], list(children[i][1].children()), children[i + 1 :]
    else:
        numbered = [i for i, n in enumerate(names) if _STAGE_NAMES.match(n)]
        if len(numbered) < 2 or numbered != list(range(numbered[0], numbered[-1] + 1)):
            return None
        stem = children[: numbered[0]]
        body = [children[i][1] for i in numbered]
        rest = children[numbered[-1] + 1 :]
    stages = ([nn.Sequential(*(m for _, m in stem))] if stem else []) + body
    post = nn.Sequential(*(m for _, m in rest), nn.Flatten(1))
    return stages, post


def timm_blocks(model: nn.Module) -> list[list[str]]:
    """Names of the model's parameters in timm's coarse groups, bottom block first.

    Names the model's matcher leaves unmatched join the top block (module docstring);
    a model without a `group_matcher` is one block.
    """
    from timm.models import group_parameters

    names = [name for name, _ in model.named_parameters()]
    try:
        matcher = model.group_matcher(coarse=True)
    except (AttributeError, NotImplementedError):
        return [names] if names else []
    groups = group_parameters(model, _unmatched_to_top(matcher))
    return [groups[i] for i in sorted(groups)]


def _unmatched_to_top(matcher):
    """The matcher with every unmatched name in the top group instead of a group of its own.

    timm's MATCH_PREV_GROUP suffix puts a name in the group before it (how its own
    matchers join a final norm to the last block); unmatched names sort last, so the
    group before them is the top block.
    """
    from timm.models._manipulate import MATCH_PREV_GROUP

    if isinstance(matcher, dict):
        # Entries are tried in order: this catch-all only takes what the others leave.
        return {**matcher, "unmatched": [(r".*", MATCH_PREV_GROUP)]}

    def matched(name: str) -> tuple[float, ...]:
        ordinal = matcher(name)
        key = tuple(ordinal) if isinstance(ordinal, tuple | list) else (ordinal,)
        return (math.inf, *MATCH_PREV_GROUP) if math.isinf(key[0]) else key

    return matched


def stages_are_blocks(
    model: nn.Module, stages: list[nn.Module], post: nn.Module, blocks: list[list[str]]
) -> bool:
    """Whether each stage holds exactly one block's parameters (post's with the top one)."""
    by_name = dict(model.named_parameters())
    expected = [{id(by_name[name]) for name in block} for block in blocks]
    held = [{id(p) for p in stage.parameters()} for stage in stages]
    if held:
        held[-1] |= {id(p) for p in post.parameters()}
    return held == expected


# torchvision ------------------------------------------------------------------


def torchvision_weights(uri: str, arch: str, name: str):
    """The weights enum member named `name` (`pretrained` is DEFAULT)."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(arch)
        return enum["DEFAULT" if name == PRETRAINED else name]
    except (KeyError, ValueError):
        raise SourceModelError(
            f"{uri}: torchvision has no weights {name!r} for {arch}; see "
            f"torchvision.models.get_model_weights({arch!r})"
        ) from None


def torchvision_state(uri: str, arch: str, name: str, *, cache_dir: Path) -> StateDict:
    """The named weights from the torch.hub cache, downloaded (hash-checked) if allowed."""
    member = torchvision_weights(uri, arch, name)
    folder = torch_checkpoints(cache_dir)
    cached = folder / Path(member.url).name
    if not cached.is_file() and offline():
        raise _not_cached(uri, folder)
    try:
        with _network_timeout(DOWNLOAD_TIMEOUT_S):
            return member.get_state_dict(
                progress=False, model_dir=str(folder), check_hash=True, weights_only=True
            )
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SourceModelError(f"{uri}: cannot fetch {member}: {reason}") from None


def torchvision_input(arch: str, weights_name: str | None) -> InputSpec:
    """Preprocessing from the weights' own transforms (DEFAULT's for a local file)."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(arch)
        member = enum["DEFAULT" if weights_name in (None, PRETRAINED) else weights_name]
        t = member.transforms()
        size, resize = int(t.crop_size[0]), int(t.resize_size[0])
        return InputSpec(
            channels=3,
            size=size,
            mean=tuple(t.mean),
            std=tuple(t.std),
            interpolation=str(t.interpolation.value),
            crop_pct=size / resize,
        )
    except Exception:
        return InputSpec(
            channels=3, size=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
        )


# shared -------------------------------------------------------------------------


def _load_checked(model: nn.Module, state: StateDict, uri: str) -> None:
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1:2] or [str(exc)]
        raise SourceModelError(
            f"{uri}: the weights do not fit the architecture: {first[0].strip()}"
        ) from None
    if missing or unexpected:
        raise SourceModelError(
            f"{uri}: the weights do not fit the architecture (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}); check that the file belongs to this model"
        )


def prefetch(uri: str, weights: str | None, *, cache_dir: Path) -> Path | None:
    """Download the pretrained weights of one source into the cache; the file, or None
    when the source needs no download (a local file, a built-in model)."""
    family, _, name = uri.partition(":")
    if weights is None or weights.endswith((".safetensors", ".pt", ".pth")):
        return None
    if family == "timm":
        return timm_weights_file(uri, name, cache_dir)
    if family == "torchvision":
        torchvision_state(uri, name, weights, cache_dir=cache_dir)
        member = torchvision_weights(uri, name, weights)
        return torch_checkpoints(cache_dir) / Path(member.url).name
    return None


def is_cached(uri: str, weights: str | None, *, cache_dir: Path) -> bool:
    """Whether the pretrained weights of a source are in the cache (no network)."""
    family, _, name = uri.partition(":")
    if family == "timm":
        from huggingface_hub import try_to_load_from_cache
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(name)
        repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        if not repo:
            return False
        found = try_to_load_from_cache(
            repo.partition("@")[0], "model.safetensors", cache_dir=hub_cache(cache_dir)
        )
        return isinstance(found, str)
    if family == "torchvision":
        try:
            member = torchvision_weights(uri, name, weights or PRETRAINED)
        except SourceModelError:
            return False
        return (torch_checkpoints(cache_dir) / Path(member.url).name).is_file()
    return True


def param_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


__all__ = [
    "PRETRAINED",
    "WeightsNotCached",
    "hub_cache",
    "is_cached",
    "load_timm",
    "offline",
    "param_bytes",
    "prefetch",
    "stages_are_blocks",
    "timm_blocks",
    "timm_input",
    "timm_stages",
    "torch_checkpoints",
    "torchvision_input",
    "torchvision_state",
]
