"""The pieces of a trial: freezing, L2-SP, augmentation, input adaptation, file sources."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tunefleet.spec import StudySpec
from workers.transfer import builtin, run_trial
from workers.transfer.data import InputSpec, load_dataset
from workers.transfer.features import FeatureCache
from workers.transfer.models import InputAdapter
from workers.transfer.sources import load_source_model
from workers.transfer.train import TrainConfig, augment, fine_tune
from workers.transfer.trial import build_model


@pytest.fixture
def digits(cache_dir: Path):
    source = load_source_model("builtin:digits-cnn", weights=None, cache_dir=cache_dir)
    return source, load_dataset("builtin:digits-5to9", source.input_spec)


def head_params(make_assignment, **params) -> dict:
    """Every hyperparameter of a trial: `params` over the digits study's defaults."""
    return StudySpec.model_validate(make_assignment()["spec"]).trial_params(params)


def never_prune(epoch: int, value: float) -> bool:
    return False


def distance(model: torch.nn.Module, reference: dict[str, torch.Tensor], prefix: str) -> float:
    state = model.state_dict()
    return sum(
        (state[k].float() - v.float()).pow(2).sum().item()
        for k, v in reference.items()
        if k.startswith(prefix) and v.is_floating_point()
    )


def test_frozen_stages_keep_weights_and_batch_norm_statistics(digits, make_assignment) -> None:
    source, data = digits
    torch.manual_seed(0)
    model = build_model(source, data, head_params(make_assignment, unfreeze_blocks=1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fine_tune(model, data, TrainConfig(lr=1e-2, epochs=1, augment_strength=0.3), never_prune)
    after = model.state_dict()
    frozen = [k for k in before if k.startswith(("stages.0.", "stages.1.", "stages.2."))]
    assert any("running_mean" in k for k in frozen)
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(before["stages.3.bn1.running_mean"], after["stages.3.bn1.running_mean"])
    assert not torch.equal(before["stages.3.conv1.weight"], after["stages.3.conv1.weight"])


def test_l2sp_keeps_the_backbone_nearer_its_pretrained_weights(digits, make_assignment) -> None:
    source, data = digits
    moved = {}
    for alpha in (0.0, 10.0):
        torch.manual_seed(0)
        model = build_model(source, data, head_params(make_assignment, unfreeze_blocks=4))
        start = {k: v.clone() for k, v in model.state_dict().items()}
        fine_tune(model, data, TrainConfig(lr=1e-2, epochs=1, l2sp_alpha=alpha), never_prune)
        moved[alpha] = distance(model, start, "stages.")
    assert moved[10.0] < 0.5 * moved[0.0]


def test_augmentation_stays_in_pixel_range_and_is_seeded() -> None:
    x = torch.rand(16, 3, 12, 12)
    first = augment(x, 1.0, torch.Generator().manual_seed(3))
    again = augment(x, 1.0, torch.Generator().manual_seed(3))
    assert first.shape == x.shape and first.min() >= 0.0 and first.max() <= 1.0
    assert torch.equal(first, again) and not torch.allclose(first, x)


def test_input_adapter_fits_grey_small_images_to_an_rgb_model() -> None:
    adapter = InputAdapter(InputSpec(channels=3, size=32, mean=(0.5,) * 3, std=(0.5,) * 3))
    out = adapter(torch.ones(2, 1, 8, 8))
    assert out.shape == (2, 3, 32, 32)
    assert torch.allclose(out, torch.ones_like(out))  # (1 - 0.5) / 0.5


def test_plain_state_dict_of_the_builtin_architecture_loads_as_a_file(
    tmp_path: Path, cache_dir: Path
) -> None:
    state, digest = builtin.load_or_pretrain(cache_dir)
    path = tmp_path / "digits.pt"
    torch.save(state, path)
    loaded = load_source_model(f"file:{path}", weights=None, cache_dir=cache_dir)
    assert loaded.arch == builtin.ARCH and loaded.content_hash == digest


def test_features_too_large_for_the_cache_train_uncached(
    cache_dir: Path, artifact_dir: Path, make_assignment
) -> None:
    results = [
        run_trial(
            make_assignment({"unfreeze_blocks": 3}, seed=9 - n, budget={"epochs": 1}),
            never_prune,
            cache_dir=cache_dir,
            artifact_dir=artifact_dir,
            feature_cache=FeatureCache(max_bytes=max_bytes),
        )
        for n, max_bytes in enumerate([1024, 2**30])
    ]
    assert [r.attrs["feature_cache"] for r in results] == ["too_large", "miss"]
    assert results[0].values == pytest.approx(results[1].values, abs=0.01)
