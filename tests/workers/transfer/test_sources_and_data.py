"""Loading source models and datasets: torchvision, files, image folders, refusals."""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from workers.transfer import (
    DatasetError,
    ParamError,
    SourceModelError,
    UnsafeWeightsError,
    run_trial,
)
from workers.transfer.data import InputSpec, load_dataset
from workers.transfer.models import ACTIVATIONS
from workers.transfer.sources import load_source_model
from workers.transfer.trial import build_model

RGB_SMALL = InputSpec(channels=3, size=16, mean=(0.5,) * 3, std=(0.25,) * 3)


def write_imagefolder(root: Path, counts: dict[str, int], size: int = 20) -> Path:
    """Class folders of PNGs: class i is a bright square on a background of colour i."""
    rng = np.random.default_rng(0)
    palette = [(200, 40, 40), (40, 40, 200), (40, 200, 40)]
    for i, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for j in range(count):
            pixels = np.empty((size, size, 3), dtype=np.uint8)
            pixels[:] = palette[i % len(palette)]
            pixels += rng.integers(0, 30, size=pixels.shape, dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{j}.png")
    return root


class MarkerPayload:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_torchvision_model_with_local_weights_fine_tunes_on_an_imagefolder(
    tmp_path: Path, cache_dir: Path, make_assignment, reports
) -> None:
    import torchvision

    weights = tmp_path / "mobilenet.pt"
    torch.manual_seed(0)
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), weights)
    folder = write_imagefolder(tmp_path / "pets", {"cat": 6, "dog": 6})
    seen, report = reports
    result = run_trial(
        make_assignment(
            {"unfreeze_blocks": 1, "lr": 1e-3, "batch_size": 8},
            source_model="torchvision:mobilenet_v3_small",
            source_weights=str(weights),
            dataset=f"imagefolder:{folder}",
            budget={"epochs": 2},
        ),
        report,
        cache_dir=cache_dir,
        artifact_dir=tmp_path / "artifacts",
    )
    assert 0.0 <= result.values["accuracy"] <= 1.0
    assert [epoch for epoch, _ in seen] == [1, 2]
    assert result.attrs["backbone_stages"] == 13  # features split into blocks, not one lump
    assert result.attrs["num_classes"] == 2
    assert Path(result.artifact).is_file()


def test_torchvision_model_without_weights_file_is_refused(cache_dir: Path) -> None:
    with pytest.raises(SourceModelError, match="source_weights"):
        load_source_model("torchvision:resnet18", weights=None, cache_dir=cache_dir)


def test_file_source_from_safetensors_with_arch_metadata(tmp_path: Path, cache_dir: Path) -> None:
    builtin_model = load_source_model("builtin:digits-cnn", weights=None, cache_dir=cache_dir)
    stages, _ = builtin_model.backbone()
    state = {f"stem.{k}": v for k, v in stages[0].state_dict().items()}
    for i, stage in enumerate(stages[1:], start=1):
        state |= {f"block{i}.{k}": v for k, v in stage.state_dict().items()}
    path = tmp_path / "digits.safetensors"
    save_file(state, str(path), metadata={"arch": "builtin:digits-cnn"})
    loaded = load_source_model(f"file:{path}", weights=None, cache_dir=cache_dir)
    assert loaded.content_hash != ""
    assert loaded.num_stages == 4 and loaded.feature_dim == 128


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_that_runs_code_is_refused_without_running(
    tmp_path: Path, cache_dir: Path, artifact_dir: Path, make_assignment, reports
) -> None:
    marker = tmp_path / "payload-ran"
    torch_file = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "extra": MarkerPayload(marker)}, torch_file)
    plain_pickle = tmp_path / "evil-plain-pickle.pth"
    plain_pickle.write_bytes(pickle.dumps(MarkerPayload(marker)))
    _, report = reports
    for path in (torch_file, plain_pickle):
        with pytest.raises(UnsafeWeightsError, match="refused"):
            run_trial(
                make_assignment(source_model=f"file:{path}"),
                report,
                cache_dir=cache_dir,
                artifact_dir=artifact_dir,
            )
        assert not marker.exists()
    with pytest.raises(UnsafeWeightsError):
        load_source_model("torchvision:resnet18", weights=str(torch_file), cache_dir=cache_dir)
    assert not marker.exists()
    assert not os.path.exists(marker)


def test_weights_that_do_not_fit_the_architecture_are_a_clear_error(
    tmp_path: Path, cache_dir: Path
) -> None:
    path = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(SourceModelError, match="do not fit"):
        load_source_model("torchvision:mobilenet_v3_small", weights=str(path), cache_dir=cache_dir)
    with pytest.raises(SourceModelError, match="cannot tell the architecture"):
        load_source_model(f"file:{path}", weights=None, cache_dir=cache_dir)


def test_imagefolder_splits_keep_every_class(tmp_path: Path) -> None:
    folder = write_imagefolder(tmp_path / "data", {"a": 10, "b": 7})
    data = load_dataset(f"imagefolder:{folder}", RGB_SMALL)
    assert data.classes == ("a", "b")
    assert len(data.train) + len(data.val) + len(data.test) == 17
    for split in (data.train, data.val, data.test):
        assert set(split.y.tolist()) == {0, 1}
        assert split.x.shape[1:] == (3, 16, 16) and split.x.dtype == torch.uint8


def test_imagefolder_with_train_and_test_folders_carves_validation(tmp_path: Path) -> None:
    write_imagefolder(tmp_path / "data" / "train", {"a": 8, "b": 8})
    write_imagefolder(tmp_path / "data" / "test", {"a": 2, "b": 2})
    data = load_dataset(f"imagefolder:{tmp_path / 'data'}", RGB_SMALL)
    assert len(data.test) == 4
    assert len(data.train) + len(data.val) == 16 and len(data.val) >= 2


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({}, "no image found under 'data'"),
        ({"a": 5, "b": 0}, "1 class folder.* under 'data' hold no images"),
        ({"a": 5}, "at least two"),
        ({"a": 5, "b": 2}, "fewer than 3 images"),
    ],
    ids=["empty", "empty-class", "one-class", "too-few"],
)
def test_unusable_imagefolder_is_a_clear_error_naming_only_what_the_spec_says(
    tmp_path: Path, layout: dict, message: str
) -> None:
    root = tmp_path / "data"
    root.mkdir()
    write_imagefolder(root, layout)
    with pytest.raises(DatasetError) as caught:
        load_dataset("imagefolder:data", RGB_SMALL)
    # The owner's message names neither the worker's folders nor the class folders it found.
    assert re.search(message, caught.value.public)
    assert str(tmp_path) not in caught.value.public
    assert not re.search(r"\b[ab]\b", caught.value.public.replace("'data'", ""))


def test_imagefolder_with_mismatched_split_classes_is_a_clear_error(tmp_path: Path) -> None:
    write_imagefolder(tmp_path / "data" / "train", {"a": 4, "b": 4})
    write_imagefolder(tmp_path / "data" / "val", {"a": 2, "c": 2})
    with pytest.raises(DatasetError, match="differ"):
        load_dataset(f"imagefolder:{tmp_path / 'data'}", RGB_SMALL)


def test_unknown_schemes_and_params_are_clear_errors(
    cache_dir: Path, artifact_dir: Path, make_assignment, reports
) -> None:
    _, report = reports
    kwargs = {"cache_dir": cache_dir, "artifact_dir": artifact_dir}
    with pytest.raises(ParamError, match=r"spec\.dataset: unknown scheme 'hub'"):
        run_trial(make_assignment(dataset="hub:cifar10"), report, **kwargs)
    with pytest.raises(ParamError, match=r"spec\.source_model: unknown scheme 'hf'"):
        run_trial(make_assignment(source_model="hf:resnet"), report, **kwargs)
    with pytest.raises(ParamError, match=r"params\.momentum: unknown hyperparameter"):
        run_trial(make_assignment({"momentum": 0.9}), report, **kwargs)
    with pytest.raises(ParamError, match=r"params\.activation: activation must be one of"):
        run_trial(make_assignment({"activation": "swish2"}), report, **kwargs)
    with pytest.raises(ParamError, match=r"params\.head_depth: head_depth must be in \[1, 8\]"):
        run_trial(make_assignment({"head_depth": 9}), report, **kwargs)
    # The loaders refuse what a spec from another version could still name.
    with pytest.raises(DatasetError, match="imagefolder"):
        load_dataset("hub:cifar10", RGB_SMALL)
    with pytest.raises(SourceModelError, match="scheme"):
        load_source_model("hf:resnet", weights=None, cache_dir=cache_dir)


def test_fixed_params_fill_in_what_was_not_sampled(
    cache_dir: Path, artifact_dir: Path, make_assignment, reports
) -> None:
    _, report = reports
    result = run_trial(
        make_assignment({"lr": 5e-3}, fixed_params={"head_width": 32}, budget={"epochs": 1}),
        report,
        cache_dir=cache_dir,
        artifact_dir=artifact_dir,
    )
    config = json.loads((Path(result.artifact).parent / "config.json").read_text())["config"]
    assert config["params"]["lr"] == 5e-3  # sampled
    assert config["params"]["head_width"] == 32  # fixed beats the default
    assert config["params"]["optimizer"] == "adam"  # the default


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_activation_builds_and_trains(
    activation: str, cache_dir: Path, artifact_dir: Path, make_assignment, reports
) -> None:
    _, report = reports
    result = run_trial(
        make_assignment(
            {"activation": activation, "head_depth": 2, "head_width": 16, "unfreeze_blocks": 1},
            budget={"epochs": 1},
        ),
        report,
        cache_dir=cache_dir,
        artifact_dir=artifact_dir,
    )
    assert 0.0 <= result.values["accuracy"] <= 1.0


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_every_head_depth_builds_and_trains(
    depth: int, cache_dir: Path, artifact_dir: Path, make_assignment, reports
) -> None:
    source = load_source_model("builtin:digits-cnn", weights=None, cache_dir=cache_dir)
    data = load_dataset("builtin:digits-5to9", source.input_spec)
    params = {
        "head_depth": depth,
        "head_width": 16,
        "dropout": 0.1,
        "activation": "silu",
        "unfreeze_blocks": 0,
    }
    model = build_model(source, data, params)
    assert sum(isinstance(m, torch.nn.Linear) for m in model.head) == depth
    _, report = reports
    result = run_trial(
        make_assignment(params, budget={"epochs": 1}),
        report,
        cache_dir=cache_dir,
        artifact_dir=artifact_dir,
    )
    assert 0.0 <= result.values["accuracy"] <= 1.0
