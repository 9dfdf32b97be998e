"""`unfreeze_blocks` counts the blocks of every torchvision classification family."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tests.backbone_caches import write_imagefolder, write_torchvision_cache
from workers.transfer import backbones, sources, torchvision_blocks
from workers.transfer.data import InputSpec
from workers.transfer.features import FeatureCache
from workers.transfer.models import InputAdapter, TransferModel
from workers.transfer.trial import run_trial

# One model a family: its block count, whether its forward is the chain of its
# blocks, the input size the chain is checked at (small where the model allows),
# and what unfreeze_blocks=1 trains: the top block and what lies above it.
FAMILIES = {
    "alexnet": (5, True, 64, ("features.10.", "classifier.1.", "classifier.4.")),
    "vgg11_bn": (8, True, 32, ("features.25.", "features.26.", "classifier.0.", "classifier.3.")),
    "squeezenet1_1": (9, True, 64, ("features.12.",)),
    "shufflenet_v2_x0_5": (5, True, 64, ("conv5.",)),
    "mnasnet0_5": (8, True, 64, ("layers.14.", "layers.15.")),
    "densenet121": (5, True, 64, ("features.denseblock4.", "features.norm5.")),
    "googlenet": (10, True, 64, ("inception5b.",)),
    "inception_v3": (12, True, 75, ("Mixed_7c.",)),
    "swin_t": (8, True, 64, ("features.7.", "norm.")),
    "swin_v2_t": (8, True, 64, ("features.7.", "norm.")),
    "maxvit_t": (5, True, 224, ("blocks.3.", "classifier.2.", "classifier.3.")),
    "vit_b_32": (13, False, 224, ("encoder.layers.encoder_layer_11.", "encoder.ln.")),
    "resnet18": (5, True, 64, ("layer4.",)),
    "regnet_x_400mf": (5, True, 64, ("trunk_output.block4.",)),
    "mobilenet_v3_small": (13, True, 64, ("features.12.", "classifier.0.")),
    "efficientnet_b0": (9, True, 64, ("features.8.",)),
    "convnext_tiny": (8, True, 64, ("features.7.", "classifier.0.")),
}


@contextlib.contextmanager
def without_initialisation() -> Iterator[None]:
    """Models built with uninitialised weights: what the block lists need, in seconds."""
    names = [n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")]
    with contextlib.ExitStack() as stack, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GoogLeNet's and Inception's init_weights notice
        for name in names:
            stack.enter_context(mock.patch.object(nn.init, name, lambda t, *a, **k: t))
        yield


def headless(name: str, *, initialised: bool = True) -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    with without_initialisation() if not initialised else warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torchvision.models.get_model(name, weights=None)
    torchvision_blocks.headless(model, f"torchvision:{name}")
    return model.eval()


def trained(model: TransferModel, names: dict[int, str]) -> set[str]:
    """The backbone parameters that train, by their name in the torchvision model."""
    return {
        names[id(p)]
        for n, p in model.named_parameters()
        if p.requires_grad and not n.startswith("head.")
    }


def test_every_torchvision_classifier_has_more_than_one_block():
    import torchvision

    for name in torchvision.models.list_models(module=torchvision.models):
        model = headless(name, initialised=False)
        found = torchvision_blocks.layout(model)
        blocks = torchvision_blocks.parameter_blocks(model, found.blocks)
        assert len(blocks) > 1, name
        # Each parameter of the backbone in exactly one block, the classifier in none.
        everything = [n for n, _ in model.named_parameters()]
        assert sorted(n for block in blocks for n in block) == sorted(everything), name
        assert not any("aux" in n.lower() for n in everything), name
        split = torchvision_blocks.chain(model, found)
        if name.startswith("vit_"):
            assert split is None, name
        else:
            assert split is not None and backbones.stages_are_blocks(model, *split, blocks), name


@pytest.mark.parametrize("name", FAMILIES)
def test_unfreeze_one_block_trains_exactly_the_top_block(name):
    count, is_chain, size, top = FAMILIES[name]
    model = headless(name)
    names = {id(p): n for n, p in model.named_parameters()}
    found = torchvision_blocks.layout(model)
    blocks = torchvision_blocks.parameter_blocks(model, found.blocks)
    assert len(blocks) == count
    split = torchvision_blocks.chain(model, found)
    spec = InputSpec(channels=3, size=size, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert (split is not None and sources._chain_matches(model, *split, spec)) == is_chain
    if is_chain:
        stages, post = split
        transfer = TransferModel(InputAdapter(spec), stages, post, nn.Identity(), unfreeze_blocks=1)
        assert transfer.cut == count - 1  # the frozen blocks run once, into the cache
    else:
        transfer = TransferModel(
            InputAdapter(spec),
            [model],
            nn.Flatten(1),
            nn.Identity(),
            unfreeze_blocks=1,
            blocks=blocks,
        )
    expected = {n for n in names.values() if n.startswith(top)}
    assert trained(transfer, names) == expected == set(blocks[-1])
    transfer.train()
    assert not any(m.training for m in transfer.frozen_modules())


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def never_prune(epoch: int, value: float) -> bool:
    return False


def top_block_trial(name, tmp_path, make_assignment, artifact_dir, cache):
    """One epoch of `name` (random weights in a cache laid out as torchvision's) with its top
    block unfrozen, on a small image folder: the source model and the trial's result."""
    write_torchvision_cache(tmp_path, name)
    images = write_imagefolder(tmp_path / "images")
    source = sources.load_source_model(
        f"torchvision:{name}", weights="pretrained", cache_dir=tmp_path
    )
    result = run_trial(
        make_assignment(
            {"unfreeze_blocks": 1, "batch_size": 8},
            source_model=f"torchvision:{name}",
            source_weights="pretrained",
            dataset=f"imagefolder:{images}",
            budget={"epochs": 1},
        ),
        never_prune,
        cache_dir=tmp_path,
        artifact_dir=artifact_dir,
        feature_cache=cache,
    )
    return source, result


def test_a_vit_trial_fine_tunes_only_its_top_encoder_layer(tmp_path, make_assignment, artifact_dir):
    source, result = top_block_trial(
        "vit_b_32", tmp_path, make_assignment, artifact_dir, FeatureCache()
    )
    assert source.num_stages == 1 and source.num_blocks == 13  # runs whole
    assert result.attrs["backbone_stages"] == 13 and result.attrs["unfrozen_stages"] == 1
    after = load_file(result.artifact)
    before = source.backbone()[0][0].state_dict()
    top = ("encoder.layers.encoder_layer_11.", "encoder.ln.")
    for name, value in before.items():
        assert torch.equal(after[f"stages.0.{name}"], value) != name.startswith(top), name


def test_a_squeezenet_trial_caches_its_frozen_blocks(tmp_path, make_assignment, artifact_dir):
    # SqueezeNet's classifier is a convolution, not a linear layer: it is replaced too.
    cache = FeatureCache()
    source, result = top_block_trial(
        "squeezenet1_1", tmp_path, make_assignment, artifact_dir, cache
    )
    assert source.num_stages == source.num_blocks == 9 and source.blocks is None
    assert source.feature_dim == 512
    assert result.attrs["unfrozen_stages"] == 1 and result.attrs["feature_cache"] == "miss"
    assert {key[-1] for key in cache._entries} == {8}  # output of the 8 frozen blocks


def test_mnasnet_loads_from_a_safetensors_file_without_module_versions(tmp_path):
    import torchvision

    path = tmp_path / "mnasnet.safetensors"
    state = torchvision.models.mnasnet0_5(weights=None).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    source = sources.load_source_model(
        "torchvision:mnasnet0_5", weights=str(path), cache_dir=tmp_path
    )
    assert source.num_blocks == 8


@pytest.mark.filterwarnings("ignore::FutureWarning")  # GoogLeNet's init_weights notice
@pytest.mark.parametrize("aux_weights", [True, False])
def test_googlenet_drops_its_auxiliary_classifiers_and_normalises_as_its_weights_expect(
    tmp_path, aux_weights
):
    import torchvision

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = torchvision.models.googlenet(weights=None, init_weights=False).state_dict()
    if not aux_weights:  # as saved from a model torchvision built with its weights
        state = {k: v for k, v in state.items() if not k.startswith("aux")}
    path = tmp_path / "googlenet.pt"
    torch.save(state, path)
    source = sources.load_source_model(
        "torchvision:googlenet", weights=str(path), cache_dir=tmp_path
    )
    assert source.num_blocks == 10 and source.blocks is None
    stages, _ = source.backbone()
    held = [n for stage in stages for n, _ in stage.named_parameters()]
    assert held and not any("aux" in n for n in held)
    # transform_input's renormalisation, done by the input adapter.
    assert source.input_spec.mean == source.input_spec.std == (0.5, 0.5, 0.5)
