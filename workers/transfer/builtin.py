"""The built-in source models, pretrained here: `builtin:digits-cnn` and `builtin:glyphs-cnn`.

`builtin:digits-cnn` learns scikit-learn's 8x8 digits 0-4; its target tasks
(`builtin:digits-5to9`, `builtin:digits-shifted`) are the other five digits, so
a study on the built-in pair is a real transfer problem that runs in seconds on a
CPU. `builtin:glyphs-cnn` learns ten generated 16x16 glyphs (glyphs.py); its
target tasks (`builtin:glyphs`) are ten other glyphs, drawn differently.
Pretraining is deterministic; the weights are written once as safetensors in
the cache directory and reused by every later trial and worker on the machine.
"""

from __future__ import annotations

import fcntl
import logging
import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from workers.transfer import glyphs
from workers.transfer.builtin_tasks import DIGITS_MEAN, DIGITS_STD, digits_arrays
from workers.transfer.data import InputSpec
from workers.transfer.weights import StateDict, load_weights, save_weights, state_dict_hash

ARCH = "builtin:digits-cnn"
GLYPHS_ARCH = "builtin:glyphs-cnn"
PRETRAIN_SEED = 0
SOURCE_CLASSES = (0, 1, 2, 3, 4)

log = logging.getLogger(__name__)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a (projected) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class DigitsCNN(nn.Module):
    """Stem and three residual blocks on one-channel inputs (already normalised): 8x8
    digits, or 16x16 glyphs for `builtin:glyphs-cnn`."""

    def __init__(self, num_classes: int = len(SOURCE_CLASSES)) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU()
        )
        self.block1 = ResidualBlock(32, 32, 1)  # 8x8
        self.block2 = ResidualBlock(32, 64, 2)  # 4x4
        self.block3 = ResidualBlock(64, 128, 2)  # 2x2
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.stem(x))))
        return self.fc(self.pool(x))


def _digits_source() -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = digits_arrays()
    keep = torch.isin(labels, torch.tensor(SOURCE_CLASSES))
    return images[keep], labels[keep]


@dataclass(frozen=True)
class BuiltinSource:
    """A source model pretrained here: its data, recipe and what it expects as input."""

    arch: str
    # Bump when the architecture or the pretraining recipe changes: it names the cache file.
    recipe_version: int
    source_task: str
    classes: int
    arrays: Callable[[], tuple[torch.Tensor, torch.Tensor]]  # images in [0, 1], labels
    input_spec: InputSpec
    epochs: int
    seconds: int  # about how long pretraining takes on one CPU core

    @property
    def name(self) -> str:
        return self.arch.partition(":")[2]


SOURCES = {
    ARCH: BuiltinSource(
        ARCH,
        recipe_version=1,
        source_task="sklearn digits 0-4",
        classes=len(SOURCE_CLASSES),
        arrays=_digits_source,
        input_spec=InputSpec(channels=1, size=8, mean=(DIGITS_MEAN,), std=(DIGITS_STD,)),
        epochs=8,
        seconds=10,
    ),
    GLYPHS_ARCH: BuiltinSource(
        GLYPHS_ARCH,
        recipe_version=1,
        source_task="generated glyphs " + " ".join(glyphs.SOURCE_GLYPHS),
        classes=len(glyphs.SOURCE_GLYPHS),
        arrays=glyphs.source_arrays,
        input_spec=InputSpec(
            channels=1, size=glyphs.SIZE, mean=(glyphs.GLYPHS_MEAN,), std=(glyphs.GLYPHS_STD,)
        ),
        epochs=6,
        seconds=30,
    ),
}


def cache_path(cache_dir: Path, arch: str = ARCH) -> Path:
    source = SOURCES[arch]
    return Path(cache_dir) / "sources" / f"{source.name}-v{source.recipe_version}.safetensors"


@contextmanager
def _file_lock(path: Path):
    """Serialise pretraining between worker processes that share a cache directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_or_pretrain(cache_dir: Path, arch: str = ARCH) -> tuple[StateDict, str]:
    """The pretrained weights of `arch` and their content hash, pretraining on the first
    call."""
    source = SOURCES[arch]
    path = cache_path(cache_dir, arch)
    with _file_lock(path.with_suffix(".lock")):
        if path.is_file():
            state, metadata = load_weights(path)
            digest = state_dict_hash(state)
            if metadata.get("sha256") == digest:
                return state, digest
            # A torn or foreign file: pretrain again rather than trust it.
        log.info(
            "pretraining %s once (about %d s on a CPU), cached in %s", arch, source.seconds, path
        )
        state, source_accuracy = pretrain(source)
        digest = state_dict_hash(state)
        save_weights(
            path,
            state,
            {
                "arch": arch,
                "recipe_version": str(source.recipe_version),
                "sha256": digest,
                "source_task": source.source_task,
                "source_train_accuracy": f"{source_accuracy:.4f}",
            },
        )
        return state, digest


def warm_cache(cache_dir: Path, arch: str = ARCH) -> str:
    """Pretrain the built-in source model `arch` now, if it is not cached; returns its
    hash."""
    _, digest = load_or_pretrain(cache_dir, arch)
    log.info("%s ready in %s (sha256 %s)", arch, cache_path(cache_dir, arch), digest[:12])
    return digest


def pretrain(
    source: BuiltinSource = SOURCES[ARCH],
    *,
    epochs: int | None = None,
    seed: int = PRETRAIN_SEED,
) -> tuple[StateDict, float]:
    """Train DigitsCNN on the source's task on the CPU; the same seed gives the same bytes."""
    epochs = epochs or source.epochs
    images, y = source.arrays()
    x = (images - source.input_spec.mean[0]) / source.input_spec.std[0]
    threads = torch.get_num_threads()
    # One thread: the reduction order, hence the bytes, no longer depend on the machine.
    torch.set_num_threads(1)
    try:
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = DigitsCNN(source.classes)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
        batch_size = 64
        steps = epochs * math.ceil(len(x) / batch_size)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps))
        )
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), batch_size):
                idx = order[start : start + batch_size]
                # Shift by up to one pixel so that the features do not memorise positions.
                shift = torch.randint(-1, 2, (2,), generator=generator).tolist()
                xb = torch.roll(x[idx], shifts=shift, dims=(2, 3))
                loss = F.cross_entropy(model(xb), y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
        model.eval()
        with torch.no_grad():
            accuracy = (model(x).argmax(1) == y).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, accuracy
