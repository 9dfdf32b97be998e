"""Source models by URI, loaded once per worker process and kept while they fit.

`builtin:digits-cnn` and `builtin:glyphs-cnn` are pretrained here (see builtin.py);
`timm:<name>` and `torchvision:<arch>` are built by their library and take `pretrained` (the
library's download, cached; see backbones.py), a torchvision weights name, or a
local weights file; `file:<path>` loads a safetensors or state-dict file whose
architecture is named in its metadata (`arch`) or recognised from its keys.

Loaded backbones stay in a least-recently-used cache bounded by their size
(TUNEFLEET_BACKBONE_CACHE_MB); `warm_backbones()` names them, and the worker
tells the service, which prefers to hand it trials of those backbones.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from workers.transfer import backbones, builtin, torchvision_blocks
from workers.transfer.access import FileAccess
from workers.transfer.data import InputSpec
from workers.transfer.deferred_init import build_from_weights
from workers.transfer.errors import SourceModelError
from workers.transfer.weights import StateDict, load_weights, state_dict_hash

DIGITS_INPUT = builtin.SOURCES[builtin.ARCH].input_spec


@dataclass
class SourceModel:
    """A pretrained backbone split into stages; `backbone()` gives a fresh copy.

    `blocks` is None when each stage is a block that `unfreeze_blocks` counts; for a
    timm or torchvision model that is not a chain (one stage, the whole model) it holds the names of
    that stage's parameters in each block, bottom first (backbones.timm_blocks,
    torchvision_blocks).
    """

    uri: str
    arch: str
    content_hash: str
    input_spec: InputSpec
    feature_dim: int
    _stages: nn.ModuleList
    _post: nn.Module
    blocks: tuple[tuple[str, ...], ...] | None = None

    def backbone(self) -> tuple[list[nn.Module], nn.Module]:
        stages, post = copy.deepcopy((self._stages, self._post))
        return list(stages), post

    @property
    def num_stages(self) -> int:
        return len(self._stages)

    @property
    def num_blocks(self) -> int:
        """What `unfreeze_blocks` counts: the blocks, or the stages when each is a block."""
        return len(self.blocks) if self.blocks is not None else len(self._stages)


_SOURCES: OrderedDict[tuple, SourceModel] = OrderedDict()
_LOCK = threading.Lock()
MAX_BACKBONE_BYTES = int(os.environ.get("TUNEFLEET_BACKBONE_CACHE_MB", "4096")) * 2**20


def warm_backbones() -> list[str]:
    """URIs of the source models this process holds, most recently used first."""
    with _LOCK:
        return list(dict.fromkeys(source.uri for source in reversed(_SOURCES.values())))


def _keep(key: tuple, source: SourceModel) -> None:
    """Hold `source`, dropping the least recently used ones beyond the size bound."""
    _SOURCES[key] = source
    _SOURCES.move_to_end(key)
    sizes = {
        k: backbones.param_bytes(v._stages) + backbones.param_bytes(v._post)
        for k, v in _SOURCES.items()
    }
    while len(_SOURCES) > 1 and sum(sizes[k] for k in _SOURCES) > MAX_BACKBONE_BYTES:
        _SOURCES.popitem(last=False)


def load_source_model(
    uri: str, *, weights: str | None, cache_dir: Path, access: FileAccess | None = None
) -> SourceModel:
    """The source model named by `uri` with `weights` (timm and torchvision), cached.

    A `file:` path and a weights file must lie under the worker's model roots
    (`access`, by default this process's TUNEFLEET_* settings); checked before they
    are opened. Library weights (`pretrained`, a weights name) come from the cache.
    """
    if not isinstance(uri, str) or ":" not in uri:
        raise SourceModelError(
            f"source model {uri!r} is not a URI; use builtin:digits-cnn, timm:<name>, "
            "torchvision:<arch> (with source_weights) or file:<path>"
        )
    scheme, _, rest = uri.partition(":")
    if scheme == "builtin":
        key: tuple = (uri, str(Path(cache_dir).resolve()))
    elif scheme in ("timm", "torchvision"):
        if not weights:
            raise SourceModelError(
                f"{uri} needs source_weights: pretrained, a torchvision weights name or the "
                "path of a local .safetensors or .pt state dict on the worker"
            )
        path, shown = None, weights
        if _is_file(weights):
            access = access or FileAccess.from_env()
            path = access.model_path(weights, "source_weights")
            key = (uri, *_file_key(path, shown))
        else:
            key = (uri, weights, str(Path(cache_dir).resolve()))
    elif scheme == "file":
        access = access or FileAccess.from_env()
        path = access.model_path(rest, "source_model")
        shown = rest
        key = (uri, *_file_key(path, shown))
    else:
        raise SourceModelError(
            f"unknown source model scheme {scheme!r} in {uri!r}; use builtin:, timm:, "
            "torchvision: or file:"
        )
    with _LOCK:
        if key in _SOURCES:
            _SOURCES.move_to_end(key)
            return _SOURCES[key]
        if scheme == "builtin":
            source = _load_builtin(uri, Path(cache_dir))
        elif scheme == "timm":
            # A weights file is read from where the root check resolved it.
            timm_weights = str(path) if path is not None else weights
            source = _load_timm(uri, rest, timm_weights, Path(cache_dir))  # type: ignore[arg-type]
        elif scheme == "torchvision":
            if path is not None:
                state, _ = load_weights(path, shown=shown)
                source = _from_torchvision(uri, rest, state)
            else:
                state = backbones.torchvision_state(
                    uri,
                    rest,
                    weights,
                    cache_dir=Path(cache_dir),  # type: ignore[arg-type]
                )
                source = _from_torchvision(uri, rest, state, weights_name=weights)
        else:
            source = _load_file(uri, path, shown)
        _keep(key, source)
        return source


def _is_file(weights: str) -> bool:
    return weights.endswith((".safetensors", ".pt", ".pth"))


def _load_timm(uri: str, name: str, weights: str, cache_dir: Path) -> SourceModel:
    try:
        import timm  # noqa: F401
    except ImportError:
        raise SourceModelError(
            f"{uri}: timm is not installed on this worker; pip install 'tunefleet[worker]'"
        ) from None
    model = backbones.load_timm(uri, name, weights=weights, cache_dir=cache_dir)
    input_spec = backbones.timm_input(model)
    blocks = backbones.timm_blocks(model)
    split = backbones.timm_stages(model)
    stages, post, groups = _stages_or_blocks(model, split, blocks, input_spec)
    return SourceModel(
        uri=uri,
        arch=f"timm:{name}",
        content_hash=state_dict_hash(model.state_dict()),
        input_spec=input_spec,
        feature_dim=_feature_width(model, input_spec),
        _stages=nn.ModuleList(stages),
        _post=post,
        blocks=groups,
    )


@torch.no_grad()
def _feature_width(model: nn.Module, spec: InputSpec) -> int:
    """Width of the classifier-less model's output, read from one forward pass."""
    x = torch.zeros(1, spec.channels, spec.size, spec.size)
    return int(model.eval()(x).flatten(1).shape[1])


@torch.no_grad()
def _stages_or_blocks(
    model: nn.Module,
    split: tuple[list[nn.Module], nn.Module] | None,
    blocks: list[list[str]],
    input_spec: InputSpec,
) -> tuple[list[nn.Module], nn.Module, tuple[tuple[str, ...], ...] | None]:
    """The model as a chain of stages when `split` is one stage per block and gives the
    model's own output (the frozen stages can then be cached); else the whole model,
    with its blocks as parameter names, frozen parameter by parameter."""
    if (
        split is not None
        and backbones.stages_are_blocks(model, *split, blocks)
        and _chain_matches(model, *split, input_spec)
    ):
        stages, post = split
        return stages, post, None
    return [copy.deepcopy(model)], nn.Flatten(1), tuple(tuple(block) for block in blocks)


def _chain_matches(
    model: nn.Module, stages: list[nn.Module], post: nn.Module, spec: InputSpec
) -> bool:
    """The stages and post, run in order, give the model's own features."""
    x = torch.rand(
        2, spec.channels, spec.size, spec.size, generator=torch.Generator().manual_seed(0)
    )
    try:
        expected = model.eval()(x).flatten(1)
        got = x
        for module in [*stages, post]:
            got = module.eval()(got)
    except Exception:
        return False
    return got.shape == expected.shape and torch.allclose(got, expected, atol=1e-4, rtol=1e-3)


def _file_key(path: Path, shown: str) -> tuple:
    if not path.is_file():
        raise SourceModelError(
            f"weights file {path} does not exist on this worker",
            public=f"no weights file {shown!r} on the worker; copy it there or fix the path",
            code="weights_missing",
        )
    stat = path.stat()
    return (str(path), stat.st_size, stat.st_mtime_ns)


def _load_builtin(uri: str, cache_dir: Path) -> SourceModel:
    if uri not in builtin.SOURCES:
        raise SourceModelError(
            f"unknown built-in model {uri!r}; the built-in ones are {', '.join(builtin.SOURCES)}"
        )
    state, digest = builtin.load_or_pretrain(cache_dir, uri)
    return _from_digits_cnn(uri, state, digest, arch=uri)


def _load_file(uri: str, path: Path, shown: str) -> SourceModel:
    state, metadata = load_weights(path, shown=shown)
    arch = metadata.get("arch") or metadata.get("tunefleet.arch")
    if arch is None and _matches(builtin.DigitsCNN(), state):
        arch = builtin.ARCH
    if arch in builtin.SOURCES:
        return _from_digits_cnn(uri, state, state_dict_hash(state), arch=arch)
    if arch and arch.startswith("torchvision:"):
        return _from_torchvision(uri, arch.partition(":")[2], state)
    advice = (
        (f"its metadata names {arch!r}; " if arch else "")
        + "save it with metadata {'arch': 'torchvision:<name>'} (or 'builtin:digits-cnn'), "
        "or use source_model torchvision:<name> with source_weights pointing to the file"
    )
    raise SourceModelError(
        f"cannot tell the architecture of {path}: {advice}",
        public=f"cannot tell the architecture of {shown!r}: {advice}",
    )


def _matches(model: nn.Module, state: StateDict) -> bool:
    expected = {k: v.shape for k, v in model.state_dict().items()}
    given = {k: v.shape for k, v in state.items()}
    body = {k for k in expected if not k.startswith("fc.")}
    return all(k in given and given[k] == expected[k] for k in body)


def _load_without_classifier(
    model: nn.Module, state: StateDict, classifier: str | tuple[str, ...], uri: str
) -> None:
    """Load every weight but the old classifier's (`classifier`: its name, or the prefixes
    of what was dropped), which may have any number of classes."""
    prefixes = (f"{classifier}.",) if isinstance(classifier, str) else classifier
    body = OrderedDict((k, v) for k, v in state.items() if not k.startswith(prefixes))
    # Module versions (MNASNet checks its own); a safetensors file carries none, so the
    # model's current ones.
    metadata = getattr(state, "_metadata", None)
    body._metadata = metadata if metadata is not None else model.state_dict()._metadata  # type: ignore[attr-defined]
    try:
        missing, unexpected = model.load_state_dict(body, strict=False)
    except RuntimeError as exc:
        raise SourceModelError(f"{uri}: the weights do not fit the architecture: {exc}") from exc
    missing = [k for k in missing if not k.startswith(prefixes)]
    if missing or unexpected:
        raise SourceModelError(
            f"{uri}: the weights do not fit the architecture (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}); check that the file belongs to this model"
        )


def _from_digits_cnn(uri: str, state: StateDict, digest: str, *, arch: str) -> SourceModel:
    """A built-in source's network (`arch`: which one, for its input) holding `state`."""
    model = builtin.DigitsCNN()
    _load_without_classifier(model, state, "fc", uri)
    model.eval()
    return SourceModel(
        uri=uri,
        arch=arch,
        content_hash=digest,
        input_spec=builtin.SOURCES[arch].input_spec,
        feature_dim=model.fc.in_features,
        _stages=nn.ModuleList([model.stem, model.block1, model.block2, model.block3]),
        _post=model.pool,
    )


def headless_torchvision(
    uri: str, name: str, state: StateDict, *, initialise: bool = False
) -> tuple[nn.Module, int]:
    """The torchvision model without its classifier, `state` loaded (without the random
    initialisation it overwrites unless `initialise`: deferred_init), and its feature
    width."""
    import torchvision

    # GoogLeNet and Inception v3 announce a change of their default initialisation
    # unless told which one; like torchvision's builders when they load weights, none.
    options = {"init_weights": False} if name in ("googlenet", "inception_v3") else {}
    feature_dim = 0

    def build() -> nn.Module:
        nonlocal feature_dim
        try:
            model = torchvision.models.get_model(name, weights=None, **options)
        except ValueError as exc:
            raise SourceModelError(
                f"{uri}: torchvision has no model {name!r}; see torchvision.models.list_models()"
            ) from exc
        dropped, feature_dim = torchvision_blocks.headless(model, uri)
        _load_without_classifier(model, state, dropped, uri)
        return model.eval()

    model = build_from_weights(build, initialise=initialise)
    return model, feature_dim


def _from_torchvision(
    uri: str, name: str, state: StateDict, *, weights_name: str | None = None
) -> SourceModel:
    """The model without its classifier, in the blocks of torchvision_blocks: as a chain
    of stages where its forward is one (checked), else whole, frozen by parameter."""
    model, feature_dim = headless_torchvision(uri, name, state)
    input_spec = backbones.torchvision_input(name, weights_name)
    if hasattr(model, "transform_input"):
        # Inception v3 and GoogLeNet: torchvision's builders turn on transform_input
        # for their weights, which renormalises ImageNet-normalised input to
        # (x - 0.5) / 0.5; normalising to that directly keeps the forward a chain.
        input_spec = dataclasses.replace(input_spec, mean=(0.5,) * 3, std=(0.5,) * 3)
    found = torchvision_blocks.layout(model)
    blocks = torchvision_blocks.parameter_blocks(model, found.blocks)
    split = torchvision_blocks.chain(model, found)
    stages, post, groups = _stages_or_blocks(model, split, blocks, input_spec)
    return SourceModel(
        uri=uri,
        arch=f"torchvision:{name}",
        content_hash=state_dict_hash(state),
        input_spec=input_spec,
        feature_dim=feature_dim,
        _stages=nn.ModuleList(stages),
        _post=post,
        blocks=groups,
    )
