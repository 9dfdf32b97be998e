"""`unfreeze_blocks` counts timm's own block groups, for chains of stages and for ViTs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from tests.backbone_caches import TIMM_MODEL, write_imagefolder, write_timm_cache
from tunefleet.spec import StudySpec
from workers.transfer import backbones, sources
from workers.transfer.data import InputSpec, load_dataset
from workers.transfer.features import FeatureCache
from workers.transfer.models import InputAdapter, TransferModel
from workers.transfer.train import TrainConfig, fine_tune
from workers.transfer.trial import build_model, run_trial

# timm's tiny ViT (random weights here): stem (cls token, position and patch
# embeddings), blocks.0..5, then the final norm, which trains with blocks.5.
VIT = "test_vit"
VIT_TRAINED = {
    0: (),
    1: ("blocks.5.", "norm."),
    2: ("blocks.4.", "blocks.5.", "norm."),
}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("timm-blocks")
    for name in (TIMM_MODEL, "test_convnext", VIT):
        write_timm_cache(cache, name)
    return cache


@pytest.fixture
def images(tmp_path: Path) -> str:
    return f"imagefolder:{write_imagefolder(tmp_path / 'images')}"


def load(caches: Path, name: str) -> sources.SourceModel:
    return sources.load_source_model(f"timm:{name}", weights="pretrained", cache_dir=caches)


def transfer(source, dataset: str, unfreeze_blocks: int, make_assignment):
    data = load_dataset(dataset, source.input_spec)
    spec = StudySpec.model_validate(make_assignment()["spec"])
    params = spec.trial_params({"unfreeze_blocks": unfreeze_blocks, "batch_size": 8})
    torch.manual_seed(0)
    return build_model(source, data, params), data


def trained_backbone(model: nn.Module) -> set[str]:
    return {
        name
        for name, param in model.named_parameters()
        if param.requires_grad and not name.startswith("head.")
    }


def never_prune(epoch: int, value: float) -> bool:
    return False


def test_a_vit_counts_its_stem_and_each_transformer_block(caches):
    source = load(caches, VIT)
    assert source.num_stages == 1  # its forward is no chain of children: it runs whole
    assert source.num_blocks == 7  # stem + blocks.0..5, timm's coarse groups
    assert source.blocks is not None and "norm.weight" in source.blocks[-1]


@pytest.mark.parametrize("unfreeze_blocks", [0, 1, 2])
def test_unfreeze_blocks_trains_exactly_the_top_vit_blocks(
    caches, images, make_assignment, unfreeze_blocks
):
    source = load(caches, VIT)
    model, data = transfer(source, images, unfreeze_blocks, make_assignment)
    prefixes = VIT_TRAINED[unfreeze_blocks]
    backbone = [n for n, _ in model.named_parameters() if n.startswith("stages.0.")]
    expected = {n for n in backbone if n.removeprefix("stages.0.").startswith(prefixes)}
    assert trained_backbone(model) == expected
    assert model.unfrozen_stages == unfreeze_blocks
    vit = model.stages[0]
    model.train()
    assert not vit.patch_embed.training and not vit.blocks[0].training  # frozen: eval mode
    assert vit.blocks[5].training == (unfreeze_blocks > 0)

    before = {k: v.clone() for k, v in model.state_dict().items()}
    cache = FeatureCache()
    fit = fine_tune(
        model,
        data,
        TrainConfig(lr=1e-2, epochs=1, batch_size=8),
        never_prune,
        feature_cache=cache,
        cache_key=("vit", unfreeze_blocks),
    )
    after = model.state_dict()
    for name in backbone:
        key = name
        if name in expected:
            assert not torch.equal(before[key], after[key]), f"{name} did not train"
        else:
            assert torch.equal(before[key], after[key]), f"{name} changed while frozen"
    assert not torch.equal(before["head.0.weight"], after["head.0.weight"])
    # Head-only trains on the cached output of the whole frozen ViT; with blocks to
    # train, only the adapted input (the trunk's first 0 modules) can be cached.
    assert fit.feature_cache == "miss"
    assert {key[-1] for key in cache._entries} == {2 if unfreeze_blocks == 0 else 0}


def test_frozen_batch_norm_keeps_its_statistics_in_a_model_frozen_by_parameter(caches):
    """The same freezing on a ResNet run whole, so its frozen BatchNorm layers show."""
    import timm

    torch.manual_seed(0)
    resnet = timm.create_model(TIMM_MODEL, num_classes=0)
    blocks = backbones.timm_blocks(resnet)
    assert [b[0].split(".")[0] for b in blocks] == ["conv1", *(f"layer{i}" for i in range(1, 5))]
    adapter = InputAdapter(InputSpec(channels=3, size=64, mean=(0.5,) * 3, std=(0.5,) * 3))
    model = TransferModel(
        adapter, [resnet], nn.Flatten(1), nn.Linear(96, 3), unfreeze_blocks=1, blocks=blocks
    )
    assert trained_backbone(model) == {f"stages.0.{n}" for n in blocks[-1]}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    x, y = torch.rand(4, 3, 64, 64), torch.tensor([0, 1, 2, 0])
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    after = model.state_dict()
    frozen = [k for k in before if not k.startswith(("stages.0.layer4.", "head."))]
    assert any(k.endswith("running_mean") for k in frozen)
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    top = "stages.0.layer4.0."
    assert not torch.equal(before[top + "bn1.running_mean"], after[top + "bn1.running_mean"])
    assert not torch.equal(before[top + "bn2.weight"], after[top + "bn2.weight"])


class MatchedByFunction(nn.Module):
    """A group_matcher that is a function (timm's Inception and CaiT have one)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.body, self.neck = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1), nn.Linear(4, 4)

    def group_matcher(self, coarse: bool = False):
        return lambda name: {"stem": 0, "body": 1}.get(name.split(".")[0], float("inf"))


def test_what_timm_leaves_unmatched_trains_with_the_top_block():
    # Fails if timm changes how its MATCH_PREV_GROUP suffix joins a name to the
    # group before it (timm.models._manipulate): backbones._unmatched_to_top uses it.
    assert backbones.timm_blocks(MatchedByFunction()) == [
        ["stem.weight", "stem.bias"],
        ["body.weight", "body.bias", "neck.weight", "neck.bias"],
    ]
    # A model without a matcher is one block.
    assert backbones.timm_blocks(nn.Sequential(nn.Linear(2, 2))) == [["0.weight", "0.bias"]]


@pytest.mark.parametrize("name", [TIMM_MODEL, "test_convnext"])
def test_a_chain_model_still_counts_its_stages_and_caches_the_frozen_ones(
    caches, images, make_assignment, name
):
    source = load(caches, name)
    assert source.blocks is None  # each stage is one of timm's groups
    assert source.num_blocks == source.num_stages == 5  # stem + 4 stages
    model, _ = transfer(source, images, 1, make_assignment)
    assert model.cut == 4  # stem and stages 1..3 run once, into the feature cache
    trained = trained_backbone(model)
    assert trained and all(n.startswith(("stages.4.", "post.")) for n in trained)
    if name == "test_convnext":
        # The final norm sits in timm's head; it trains with the top stage.
        assert any(n.startswith("post.") and "norm" in n for n in trained)


def test_a_vit_trial_fine_tunes_its_top_block_through_the_engine(
    caches, images, make_assignment, artifact_dir
):
    assignment = make_assignment(
        {"unfreeze_blocks": 1, "batch_size": 8},
        source_model=f"timm:{VIT}",
        source_weights="pretrained",
        dataset=images,
        budget={"epochs": 2},
    )
    result = run_trial(
        assignment,
        never_prune,
        cache_dir=caches,
        artifact_dir=artifact_dir,
        feature_cache=FeatureCache(),
    )
    assert 0.0 <= result.values["accuracy"] <= 1.0
    assert result.attrs["backbone_stages"] == 7 and result.attrs["unfrozen_stages"] == 1
    trained = load_file(result.artifact)
    pretrained = load(caches, VIT).backbone()[0][0].state_dict()
    for name, value in pretrained.items():
        same = torch.equal(trained[f"stages.0.{name}"], value)
        assert same != name.startswith(VIT_TRAINED[1]), name


def test_head_only_vit_trials_share_the_cached_features(
    caches, images, make_assignment, artifact_dir
):
    cache = FeatureCache()
    states = []
    for seed in (1, 2):
        result = run_trial(
            make_assignment(
                {"unfreeze_blocks": 0, "batch_size": 8},
                source_model=f"timm:{VIT}",
                source_weights="pretrained",
                dataset=images,
                budget={"epochs": 1},
                seed=seed,
            ),
            never_prune,
            cache_dir=caches,
            artifact_dir=artifact_dir,
            feature_cache=cache,
        )
        states.append(result.attrs["feature_cache"])
    assert states == ["miss", "hit"]
