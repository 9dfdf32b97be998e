"""Source models built without the initialisation their weights overwrite are the same
models, bit for bit, as those built the ordinary way (deferred_init)."""

from __future__ import annotations

import logging
import threading
import warnings
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from tests.backbone_caches import TIMM_MODEL, write_timm_cache
from workers.transfer import backbones, sources, torchvision_blocks
from workers.transfer.deferred_init import build_from_weights

# Each with the input size its forward accepts (small where the model allows).
TORCHVISION = {
    "resnet18": 64,
    "vit_b_32": 224,
    "swin_t": 64,
    "maxvit_t": 224,
    "googlenet": 64,
    "inception_v3": 75,
    "squeezenet1_1": 64,
    "mnasnet0_5": 64,
    "efficientnet_b0": 64,
    "convnext_tiny": 64,
}
# The tiny model of tests/backbone_caches and the others the tests use, loaded through
# the hub cache; those timm publishes no hub weights for (relative-position ViT, MaxViT,
# CoAtNet: non-persistent index buffers) through a weights file.
TIMM_HUB = (TIMM_MODEL, "test_convnext", "test_vit", "test_efficientnet", "test_nfnet")
TIMM_FILE = ("test_vit_relpos", "test_maxvit", "test_coatnet")
FALLBACK = "built with initialisation"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def assert_identical(got: nn.Module, expected: nn.Module, x: torch.Tensor) -> None:
    """Same parameters and buffers (names, dtypes, bits, trainability), same output."""
    a, b = tensors(got), tensors(expected)
    assert a.keys() == b.keys()
    for name in a:
        assert not a[name].is_meta, name
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name
        assert a[name].requires_grad == b[name].requires_grad, name
    with torch.no_grad():
        assert torch.equal(got.eval()(x), expected.eval()(x))


def old_torchvision(name: str, state: dict[str, torch.Tensor]) -> nn.Module:
    """The build before deferred_init: initialise every weight, then load over it."""
    import torchvision

    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # GoogLeNet's and Inception's notice
        model = torchvision.models.get_model(name, weights=None)
    dropped, _ = torchvision_blocks.headless(model, f"torchvision:{name}")
    body = OrderedDict((k, v) for k, v in state.items() if not k.startswith(dropped))
    body._metadata = state._metadata  # module versions: MNASNet checks its own
    missing, unexpected = model.load_state_dict(body, strict=False)
    assert not missing and not unexpected
    return model.eval()


def random_state(name: str) -> dict[str, torch.Tensor]:
    """A whole classifier's weights (auxiliary heads included), not any initialisation
    the builds under test draw."""
    import torchvision

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = torchvision.models.get_model(name, weights=None)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.01)
    return model.state_dict()


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_model_built_without_initialisation_is_the_old_one(name, caplog):
    state = random_state(name)
    size = TORCHVISION[name]
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    caplog.set_level(logging.INFO, logger="workers.transfer.deferred_init")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fast, width = sources.headless_torchvision(f"torchvision:{name}", name, state)
    assert not [w for w in seen if issubclass(w.category, FutureWarning | UserWarning)]
    assert FALLBACK not in caplog.text  # the fast path itself, not its fallback
    assert_identical(fast, old_torchvision(name, state), x)
    assert fast(x).shape == (2, width)


def test_weights_of_another_dtype_or_shared_storage_become_parameters_of_their_own():
    """As load_state_dict's copy gives: the module's dtype, storage of its own."""
    state = random_state("resnet18")
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    half["layer1.0.bn2.weight"] = half["layer1.0.bn1.weight"]  # one storage, two entries
    fast, _ = sources.headless_torchvision("torchvision:resnet18", "resnet18", half)
    old, _ = sources.headless_torchvision("torchvision:resnet18", "resnet18", half, initialise=True)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert_identical(fast, old, x)
    assert fast.conv1.weight.dtype == torch.float32
    bn1, bn2 = fast.layer1[0].bn1.weight, fast.layer1[0].bn2.weight
    assert bn1.untyped_storage().data_ptr() != bn2.untyped_storage().data_ptr()
    with torch.no_grad():
        bn1.add_(1.0)
    assert not torch.equal(bn1, bn2)


def test_weights_that_do_not_fit_are_an_error_not_a_second_build(caplog):
    state = random_state("resnet18")
    del state["layer4.1.conv2.weight"]
    caplog.set_level(logging.INFO, logger="workers.transfer.deferred_init")
    with pytest.raises(sources.SourceModelError, match=r"layer4\.1\.conv2\.weight"):
        sources.headless_torchvision("torchvision:resnet18", "resnet18", state)
    assert FALLBACK not in caplog.text


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("deferred-timm")
    for name in TIMM_HUB:
        write_timm_cache(cache, name)
    return cache


def timm_input(model: nn.Module) -> torch.Tensor:
    spec = backbones.timm_input(model)
    shape = (2, spec.channels, spec.size, spec.size)
    return torch.rand(*shape, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", TIMM_HUB)
def test_timm_pretrained_built_without_initialisation_is_the_old_one(name, hub, caplog):
    caplog.set_level(logging.INFO, logger="workers.transfer.deferred_init")
    fast = backbones.load_timm(f"timm:{name}", name, weights="pretrained", cache_dir=hub)
    assert FALLBACK not in caplog.text
    old = backbones.load_timm(
        f"timm:{name}", name, weights="pretrained", cache_dir=hub, initialise=True
    )
    assert_identical(fast, old, timm_input(old))


@pytest.mark.parametrize("name", TIMM_FILE)
def test_timm_weights_file_built_without_initialisation_is_the_old_one(name, tmp_path, caplog):
    import timm

    torch.manual_seed(0)
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model(name).state_dict().items()}, path)
    caplog.set_level(logging.INFO, logger="workers.transfer.deferred_init")
    torch.manual_seed(1)
    fast = backbones.load_timm(f"timm:{name}", name, weights=str(path), cache_dir=tmp_path)
    assert FALLBACK not in caplog.text
    torch.manual_seed(2)
    old = backbones.load_timm(
        f"timm:{name}", name, weights=str(path), cache_dir=tmp_path, initialise=True
    )
    assert_identical(fast, old, timm_input(old))


def test_a_parameter_the_weights_lack_is_initialised_as_in_the_ordinary_build(caplog):
    weights = {"weight": torch.ones(2, 3)}  # no bias

    def build() -> nn.Linear:
        layer = nn.Linear(3, 2)
        layer.load_state_dict(weights, strict=False)
        return layer

    caplog.set_level(logging.INFO, logger="workers.transfer.deferred_init")
    torch.manual_seed(0)
    fast = build_from_weights(build)
    torch.manual_seed(0)
    old = build()
    assert "bias not filled by the weights" in caplog.text
    assert_identical(fast, old, torch.ones(1, 3))


def test_a_buffer_computed_from_a_parameter_is_computed_as_in_the_ordinary_build(caplog):
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.full((3,), 2.0))
            self.register_buffer("scale", self.weight.detach() * 3, persistent=False)

        def forward(self, x):
            return x * self.weight * self.scale

    def build() -> Scaled:
        module = Scaled()
        module.load_state_dict({"weight": torch.ones(3)})
        return module

    caplog.set_level(logging.INFO, logger="workers.transfer.deferred_init")
    fast = build_from_weights(build)
    assert "scale not filled by the weights" in caplog.text
    assert torch.equal(fast.scale, torch.full((3,), 6.0))
    assert torch.equal(fast.weight, torch.ones(3))


def test_modules_other_threads_build_meanwhile_are_initialised_as_usual():
    built: list[nn.Linear] = []

    def build() -> nn.Linear:
        other = threading.Thread(target=lambda: built.append(nn.Linear(4, 4)))
        other.start()
        other.join()
        layer = nn.Linear(4, 4)
        layer.load_state_dict({"weight": torch.zeros(4, 4), "bias": torch.zeros(4)})
        return layer

    layer = build_from_weights(build)
    assert not built[0].weight.is_meta and built[0].weight.abs().sum() > 0
    assert torch.equal(layer.weight, torch.zeros(4, 4))
    assert not nn.Linear(2, 2).weight.is_meta  # and nothing is left on afterwards
