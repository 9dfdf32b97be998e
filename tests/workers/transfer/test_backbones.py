"""timm and torchvision sources by name, loaded offline from caches laid out as the
libraries lay them out, with the backbone's own preprocessing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.backbone_caches import (
    TIMM_MODEL,
    TORCHVISION_MODEL,
    write_imagefolder,
    write_timm_cache,
    write_torchvision_cache,
)
from workers.transfer import sources
from workers.transfer.backbones import WeightsNotCached
from workers.transfer.features import FeatureCache
from workers.transfer.trial import run_trial


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("backbone-cache")
    write_timm_cache(cache)
    write_torchvision_cache(cache)
    return cache


def test_timm_pretrained_comes_from_the_hub_cache_with_its_data_config(caches):
    source = sources.load_source_model(f"timm:{TIMM_MODEL}", weights="pretrained", cache_dir=caches)
    # test_resnet's data config: 160 px and mean/std 0.5, not the ImageNet defaults.
    assert source.input_spec.size == 160
    assert source.input_spec.mean == (0.5, 0.5, 0.5)
    assert source.input_spec.crop_pct == pytest.approx(0.95)
    assert source.feature_dim == 96  # read from the model's output, no table
    assert source.num_blocks == 5  # stem + layer1..4: unfreeze_blocks counts these
    assert f"timm:{TIMM_MODEL}" in sources.warm_backbones()


def test_torchvision_pretrained_comes_from_the_torch_hub_cache(caches):
    source = sources.load_source_model(
        f"torchvision:{TORCHVISION_MODEL}", weights="pretrained", cache_dir=caches
    )
    assert source.input_spec.size == 224
    assert source.input_spec.crop_pct == pytest.approx(224 / 256)
    assert source.num_stages > 1


def test_an_offline_miss_is_one_line_naming_the_model_and_the_prefetch_command(tmp_path):
    for uri in ("timm:test_convnext", "torchvision:resnet18"):
        with pytest.raises(WeightsNotCached) as caught:
            sources.load_source_model(uri, weights="pretrained", cache_dir=tmp_path)
        message = str(caught.value)
        assert "\n" not in message
        assert uri in message and "tunefleet prefetch -f SPEC" in message


def test_timm_file_weights_load_without_the_old_classifier(tmp_path):
    import timm

    model = timm.create_model("test_efficientnet", num_classes=7)
    path = tmp_path / "effnet.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    source = sources.load_source_model(
        "timm:test_efficientnet", weights=str(path), cache_dir=tmp_path
    )
    stages, post = source.backbone()
    x = torch.rand(2, 3, source.input_spec.size, source.input_spec.size)
    with torch.no_grad():
        for module in [*stages, post]:
            x = module.eval()(x)
    assert x.shape == (2, source.feature_dim)


def test_a_timm_trial_on_a_grayscale_imagefolder_trains_the_top_block(
    caches, tmp_path, make_assignment, artifact_dir
):
    folder = write_imagefolder(tmp_path / "images")
    assignment = make_assignment(
        {"unfreeze_blocks": 1, "batch_size": 8},
        source_model=f"timm:{TIMM_MODEL}",
        source_weights="pretrained",
        dataset=f"imagefolder:{folder}",
        budget={"epochs": 2},
    )
    cache = FeatureCache()
    result = run_trial(
        assignment,
        lambda *_: False,
        cache_dir=caches,
        artifact_dir=artifact_dir,
        feature_cache=cache,
    )
    assert 0.0 <= result.values["accuracy"] <= 1.0
    assert result.attrs["backbone_stages"] == 5 and result.attrs["unfrozen_stages"] == 1
    assert result.attrs["source_model"] == f"timm:{TIMM_MODEL}"
    # The frozen stem+layer1..3 features are cached, keyed with the backbone's preprocessing.
    keys = list(cache._entries)
    assert any(k[2].size == 160 and k[2].mean == (0.5, 0.5, 0.5) for k in keys), keys


def test_the_worker_loop_reports_the_backbones_the_engine_holds(caches):
    from workers.loop import _warm_backbones

    sources.load_source_model(f"timm:{TIMM_MODEL}", weights="pretrained", cache_dir=caches)
    assert _warm_backbones()[0] == f"timm:{TIMM_MODEL}"  # most recently used first
