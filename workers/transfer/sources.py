"""Source models by URI, loaded once per worker process.

`builtin:digits-cnn` is pretrained here (see builtin.py); `torchvision:<arch>`
builds the architecture with `weights=None` and loads a local weights file;
`file:<path>` loads a safetensors or state-dict file whose architecture is
named in its metadata (`arch`) or recognised from its keys. Nothing is ever
downloaded.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from workers.transfer import builtin
from workers.transfer.access import FileAccess
from workers.transfer.data import DIGITS_MEAN, DIGITS_STD, InputSpec
from workers.transfer.errors import SourceModelError
from workers.transfer.weights import StateDict, load_weights, state_dict_hash

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DIGITS_INPUT = InputSpec(channels=1, size=8, mean=(DIGITS_MEAN,), std=(DIGITS_STD,))


@dataclass
class SourceModel:
    """A pretrained backbone split into stages; `backbone()` gives a fresh copy."""

    uri: str
    arch: str
    content_hash: str
    input_spec: InputSpec
    feature_dim: int
    _stages: nn.ModuleList
    _post: nn.Module

    def backbone(self) -> tuple[list[nn.Module], nn.Module]:
        stages, post = copy.deepcopy((self._stages, self._post))
        return list(stages), post

    @property
    def num_stages(self) -> int:
        return len(self._stages)


_SOURCES: dict[tuple, SourceModel] = {}
_LOCK = threading.Lock()


def load_source_model(
    uri: str, *, weights: str | None, cache_dir: Path, access: FileAccess | None = None
) -> SourceModel:
    """The source model named by `uri` (and `weights` for torchvision), cached per process.

    A `file:` path and `weights` must lie under the worker's model roots (`access`,
    by default this process's TUNEFLEET_* settings); checked before they are opened.
    """
    if not isinstance(uri, str) or ":" not in uri:
        raise SourceModelError(
            f"source model {uri!r} is not a URI; use builtin:digits-cnn, "
            "torchvision:<arch> (with source_weights) or file:<path>"
        )
    scheme, _, rest = uri.partition(":")
    if scheme == "builtin":
        key: tuple = (uri, str(Path(cache_dir).resolve()))
    elif scheme == "torchvision":
        if not weights:
            raise SourceModelError(
                f"{uri} needs source_weights: the path of a local .safetensors or .pt state "
                "dict on the worker (TuneFleet never downloads weights)"
            )
        access = access or FileAccess.from_env()
        path = access.model_path(weights, "source_weights")
        shown = weights
        key = (uri, *_file_key(path, shown))
    elif scheme == "file":
        access = access or FileAccess.from_env()
        path = access.model_path(rest, "source_model")
        shown = rest
        key = (uri, *_file_key(path, shown))
    else:
        raise SourceModelError(
            f"unknown source model scheme {scheme!r} in {uri!r}; use builtin:, torchvision: "
            "or file:"
        )
    with _LOCK:
        if key not in _SOURCES:
            if scheme == "builtin":
                _SOURCES[key] = _load_builtin(uri, Path(cache_dir))
            elif scheme == "torchvision":
                state, _ = load_weights(path, shown=shown)
                _SOURCES[key] = _from_torchvision(uri, rest, state)
            else:
                _SOURCES[key] = _load_file(uri, path, shown)
        return _SOURCES[key]


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
    if uri != builtin.ARCH:
        raise SourceModelError(
            f"unknown built-in model {uri!r}; the built-in one is {builtin.ARCH}"
        )
    state, digest = builtin.load_or_pretrain(cache_dir)
    return _from_digits_cnn(uri, state, digest)


def _load_file(uri: str, path: Path, shown: str) -> SourceModel:
    state, metadata = load_weights(path, shown=shown)
    arch = metadata.get("arch") or metadata.get("tunefleet.arch")
    if arch is None and _matches(builtin.DigitsCNN(), state):
        arch = builtin.ARCH
    if arch == builtin.ARCH:
        return _from_digits_cnn(uri, state, state_dict_hash(state))
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


def _load_without_classifier(model: nn.Module, state: StateDict, classifier: str, uri: str) -> None:
    """Load every weight but the old classifier's, which may have any number of classes."""
    prefix = classifier + "."
    body = {k: v for k, v in state.items() if not k.startswith(prefix)}
    try:
        missing, unexpected = model.load_state_dict(body, strict=False)
    except RuntimeError as exc:
        raise SourceModelError(f"{uri}: the weights do not fit the architecture: {exc}") from exc
    missing = [k for k in missing if not k.startswith(prefix)]
    if missing or unexpected:
        raise SourceModelError(
            f"{uri}: the weights do not fit the architecture (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}); check that the file belongs to this model"
        )


def _from_digits_cnn(uri: str, state: StateDict, digest: str) -> SourceModel:
    model = builtin.DigitsCNN()
    _load_without_classifier(model, state, "fc", uri)
    model.eval()
    return SourceModel(
        uri=uri,
        arch=builtin.ARCH,
        content_hash=digest,
        input_spec=DIGITS_INPUT,
        feature_dim=model.fc.in_features,
        _stages=nn.ModuleList([model.stem, model.block1, model.block2, model.block3]),
        _post=model.pool,
    )


def _from_torchvision(uri: str, name: str, state: StateDict) -> SourceModel:
    import torchvision

    try:
        model = torchvision.models.get_model(name, weights=None)
    except ValueError as exc:
        raise SourceModelError(
            f"{uri}: torchvision has no model {name!r}; see torchvision.models.list_models()"
        ) from exc
    classifier_name, classifier = _last_linear(model, uri)
    _load_without_classifier(model, state, classifier_name, uri)
    model.eval()
    input_spec = _torchvision_input(name)
    stages, post = _split_stages(model, classifier_name, input_spec.size)
    return SourceModel(
        uri=uri,
        arch=f"torchvision:{name}",
        content_hash=state_dict_hash(state),
        input_spec=input_spec,
        feature_dim=classifier.in_features,
        _stages=nn.ModuleList(stages),
        _post=post,
    )


def _torchvision_input(name: str) -> InputSpec:
    """Input size and normalisation from the model's weight metadata (no download)."""
    import torchvision

    try:
        transforms = torchvision.models.get_model_weights(name).DEFAULT.transforms()
        size = int(transforms.crop_size[0])
        mean, std = tuple(transforms.mean), tuple(transforms.std)
    except Exception:
        size, mean, std = 224, IMAGENET_MEAN, IMAGENET_STD
    return InputSpec(channels=3, size=size, mean=mean, std=std)


def _last_linear(model: nn.Module, uri: str) -> tuple[str, nn.Linear]:
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise SourceModelError(f"{uri}: the model has no linear classifier to replace")
    return linears[-1]


def _split_stages(
    model: nn.Module, classifier_name: str, size: int
) -> tuple[list[nn.Module], nn.Module]:
    """Stages for the common families, checked against the model's own forward pass."""
    stages: list[nn.Module] | None = None
    post: nn.Module | None = None
    if all(hasattr(model, a) for a in ("conv1", "bn1", "layer1", "layer4", "avgpool", "fc")):
        # ResNet, ResNeXt, Wide ResNet
        stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
        stages = [stem, model.layer1, model.layer2, model.layer3, model.layer4]
        post = nn.Sequential(model.avgpool, nn.Flatten(1))
    elif all(hasattr(model, a) for a in ("stem", "trunk_output", "avgpool", "fc")):
        # RegNet
        stages = [model.stem, *model.trunk_output.children()]
        post = nn.Sequential(model.avgpool, nn.Flatten(1))
    elif isinstance(getattr(model, "features", None), nn.Sequential) and isinstance(
        getattr(model, "classifier", None), nn.Sequential
    ):
        # MobileNet, EfficientNet, ConvNeXt, VGG
        rest = list(model.classifier)[:-1]
        pool = getattr(model, "avgpool", None) or nn.AdaptiveAvgPool2d(1)
        flatten = [] if any(isinstance(m, nn.Flatten) for m in rest) else [nn.Flatten(1)]
        stages = list(model.features.children())
        post = nn.Sequential(pool, *flatten, *rest)
    if (
        stages is not None
        and post is not None
        and _same_features(model, classifier_name, stages, post, size)
    ):
        return stages, post
    # Any other architecture: one stage, so unfreeze_blocks >= 1 trains all of it.
    whole = copy.deepcopy(model)
    _replace(whole, classifier_name, nn.Identity())
    return [whole], nn.Flatten(1)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


@torch.no_grad()
def _same_features(
    model: nn.Module, classifier_name: str, stages: list[nn.Module], post: nn.Module, size: int
) -> bool:
    reference = copy.deepcopy(model).eval()
    _replace(reference, classifier_name, nn.Identity())
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    try:
        expected = reference(x).flatten(1)
        got = x
        for module in [*stages, post]:
            got = module.eval()(got)
    except Exception:
        return False
    return got.shape == expected.shape and torch.allclose(got, expected, atol=1e-4, rtol=1e-3)
