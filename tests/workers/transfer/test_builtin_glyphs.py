"""The generated glyph task and its source model, builtin:glyphs-cnn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tunefleet.protocol import DATASET_FINGERPRINT_ATTR
from workers.transfer import builtin, glyphs, run_trial
from workers.transfer.data import load_dataset
from workers.transfer.sources import load_source_model
from workers.transfer.weights import load_weights, state_dict_hash

GLYPHS_INPUT = builtin.SOURCES[builtin.GLYPHS_ARCH].input_spec


def test_rendering_is_deterministic_and_draws_each_image_anew() -> None:
    labels = np.repeat(np.arange(3), 4)
    first = glyphs.render(labels, glyphs.TARGET_GLYPHS, glyphs.TARGET_STYLE, seed=7)
    again = glyphs.render(labels, glyphs.TARGET_GLYPHS, glyphs.TARGET_STYLE, seed=7)
    other = glyphs.render(labels, glyphs.TARGET_GLYPHS, glyphs.TARGET_STYLE, seed=8)
    assert first.shape == (12, 1, glyphs.SIZE, glyphs.SIZE) and first.dtype == np.float32
    assert first.tobytes() == again.tobytes()
    assert not np.array_equal(first, other)
    assert first.min() >= 0 and first.max() <= 1
    # Two images of one glyph differ (transform, jitter, noise), but are still drawn:
    # ink on at least a tenth of the pixels.
    assert not np.array_equal(first[0], first[1])
    assert ((first > 0.5).mean(axis=(1, 2, 3)) > 0.1).all()


def test_an_image_is_its_glyph_not_another() -> None:
    """Without noise or transform, each glyph's image is nearest to its own clean template."""
    plain = glyphs.Style(rotation=0, scale=(1, 1), shear=0, shift=0, jitter=0, noise=0)
    labels = np.arange(len(glyphs.TARGET_GLYPHS))
    clean = glyphs.render(labels, glyphs.TARGET_GLYPHS, plain, seed=0).reshape(len(labels), -1)
    distances = ((clean[:, None] - clean[None]) ** 2).sum(-1)
    np.fill_diagonal(distances, np.inf)
    assert distances.min() > 1.0  # no two glyphs draw the same picture


def test_the_glyph_task_has_few_labels_and_a_test_split_of_5000() -> None:
    data = load_dataset("builtin:glyphs", GLYPHS_INPUT)
    assert data.classes == glyphs.TARGET_GLYPHS
    assert not set(glyphs.SOURCE_GLYPHS) & set(glyphs.TARGET_GLYPHS)
    assert torch.bincount(data.train.y).tolist() == [60] * 10
    assert torch.bincount(data.val.y).tolist() == [50] * 10
    assert torch.bincount(data.test.y).tolist() == [500] * 10
    assert data.train.x.shape[1:] == (1, glyphs.SIZE, glyphs.SIZE)
    rebuilt = glyphs.load_glyphs("builtin:glyphs", glyphs.GLYPH_DATASETS["builtin:glyphs"])
    assert rebuilt.content_hash == data.content_hash  # built anew: the same bytes
    variant = load_dataset("builtin:glyphs-s1", GLYPHS_INPUT)
    assert variant.content_hash != data.content_hash
    assert not torch.equal(variant.train.x, data.train.x)


def test_glyph_pretraining_is_reproducible() -> None:
    source = builtin.SOURCES[builtin.GLYPHS_ARCH]
    first, accuracy = builtin.pretrain(source, epochs=1)
    second, _ = builtin.pretrain(source, epochs=1)
    assert state_dict_hash(first) == state_dict_hash(second)
    assert accuracy > 0.5  # ten glyphs: chance is 0.1
    assert first["fc.weight"].shape == (len(glyphs.SOURCE_GLYPHS), 128)


@pytest.fixture(scope="module")
def glyph_source(cache_dir: Path) -> str:
    """builtin:glyphs-cnn pretrained once into the run's cache (about 30 s)."""
    _, digest = builtin.load_or_pretrain(cache_dir, builtin.GLYPHS_ARCH)
    return digest


def test_the_glyph_source_is_cached_and_loads_with_its_input(
    cache_dir: Path, glyph_source: str
) -> None:
    path = builtin.cache_path(cache_dir, builtin.GLYPHS_ARCH)
    assert path.name == "glyphs-cnn-v1.safetensors"
    state, metadata = load_weights(path)
    assert metadata["arch"] == "builtin:glyphs-cnn" and metadata["sha256"] == glyph_source
    assert float(metadata["source_train_accuracy"]) > 0.95
    source = load_source_model("builtin:glyphs-cnn", weights=None, cache_dir=cache_dir)
    assert source.content_hash == glyph_source == state_dict_hash(state)
    assert source.input_spec.size == glyphs.SIZE and source.num_stages == 4
    digits = load_source_model("builtin:digits-cnn", weights=None, cache_dir=cache_dir)
    assert digits.input_spec.size == 8 and digits.content_hash != glyph_source


def test_the_glyph_source_transfers_to_the_target_glyphs(
    cache_dir: Path, artifact_dir: Path, make_assignment, glyph_source: str
) -> None:
    """Its features carry over: a head on the frozen backbone and one unfrozen block reach
    most of the ten unseen glyphs in three epochs, and a tiny learning rate does not."""

    def accuracy(lr: float) -> tuple[float, dict]:
        result = run_trial(
            make_assignment(
                {"lr": lr, "unfreeze_blocks": 1},
                source_model="builtin:glyphs-cnn",
                dataset="builtin:glyphs",
                search_space={
                    "lr": {"type": "float", "low": 1e-6, "high": 1e-1, "log": True},
                    "unfreeze_blocks": {"type": "int", "low": 0, "high": 3},
                },
                budget={"epochs": 3},
            ),
            lambda epoch, value: False,
            cache_dir=cache_dir,
            artifact_dir=artifact_dir,
        )
        return result.values["accuracy"], result.attrs

    good, attrs = accuracy(1e-3)
    poor, _ = accuracy(1e-6)
    assert good > 0.8 and poor < 0.5
    expected = load_dataset("builtin:glyphs", GLYPHS_INPUT).content_hash
    assert attrs[DATASET_FINGERPRINT_ATTR] == expected
