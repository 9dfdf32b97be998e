"""Generated glyphs: stroke-drawn symbols at 16x16, as many images as a task asks for.

Each glyph is a few line segments in a unit square; every image draws one with
its own affine transform (rotation, scale, shear, shift), per-endpoint jitter,
stroke width and ink, then pixel noise. The source task (`builtin:glyphs-cnn`
pretrains on it) is ten letter-like glyphs; the target tasks are ten other
glyphs built from the same kinds of strokes, drawn with thinner strokes, more
noise and a stray stroke (a domain shift), with few labelled images and a test
split of 5,000. Everything comes from a seeded generator: the same task gives the
same bytes, and nothing is downloaded.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from workers.transfer.data import Dataset, Split

__all__ = [
    "GLYPHS_MEAN",
    "GLYPHS_STD",
    "GLYPH_DATASETS",
    "SIZE",
    "SOURCE_GLYPHS",
    "SOURCE_STYLE",
    "TARGET_GLYPHS",
    "TARGET_STYLE",
    "GlyphTask",
    "Style",
    "load_glyphs",
    "render",
    "source_arrays",
]

SIZE = 16

# Endpoints (x0, y0, x1, y1) in [-1, 1], y downwards.
_STROKES: dict[str, tuple[tuple[float, float, float, float], ...]] = {
    # The source task's glyphs.
    "L": ((-0.5, -0.8, -0.5, 0.8), (-0.5, 0.8, 0.6, 0.8)),
    "T": ((-0.7, -0.8, 0.7, -0.8), (0.0, -0.8, 0.0, 0.8)),
    "X": ((-0.7, -0.8, 0.7, 0.8), (0.7, -0.8, -0.7, 0.8)),
    "plus": ((-0.8, 0.0, 0.8, 0.0), (0.0, -0.8, 0.0, 0.8)),
    "H": ((-0.6, -0.8, -0.6, 0.8), (0.6, -0.8, 0.6, 0.8), (-0.6, 0.0, 0.6, 0.0)),
    "E": (
        (-0.5, -0.8, -0.5, 0.8),
        (-0.5, -0.8, 0.6, -0.8),
        (-0.5, 0.0, 0.4, 0.0),
        (-0.5, 0.8, 0.6, 0.8),
    ),
    "Z": ((-0.6, -0.8, 0.6, -0.8), (0.6, -0.8, -0.6, 0.8), (-0.6, 0.8, 0.6, 0.8)),
    "V": ((-0.7, -0.8, 0.0, 0.8), (0.0, 0.8, 0.7, -0.8)),
    "square": (
        (-0.6, -0.6, 0.6, -0.6),
        (0.6, -0.6, 0.6, 0.6),
        (0.6, 0.6, -0.6, 0.6),
        (-0.6, 0.6, -0.6, -0.6),
    ),
    "triangle": ((0.0, -0.7, 0.7, 0.6), (0.7, 0.6, -0.7, 0.6), (-0.7, 0.6, 0.0, -0.7)),
    # The target tasks' glyphs: the same kinds of strokes, other arrangements.
    "F": ((-0.5, -0.8, -0.5, 0.8), (-0.5, -0.8, 0.6, -0.8), (-0.5, 0.0, 0.4, 0.0)),
    "K": ((-0.5, -0.8, -0.5, 0.8), (-0.5, 0.0, 0.6, -0.8), (-0.5, 0.0, 0.6, 0.8)),
    "N": ((-0.6, 0.8, -0.6, -0.8), (-0.6, -0.8, 0.6, 0.8), (0.6, 0.8, 0.6, -0.8)),
    "Y": ((-0.7, -0.8, 0.0, 0.0), (0.7, -0.8, 0.0, 0.0), (0.0, 0.0, 0.0, 0.8)),
    "A": ((-0.7, 0.8, 0.0, -0.8), (0.0, -0.8, 0.7, 0.8), (-0.35, 0.1, 0.35, 0.1)),
    "M": (
        (-0.7, 0.8, -0.7, -0.8),
        (-0.7, -0.8, 0.0, 0.2),
        (0.0, 0.2, 0.7, -0.8),
        (0.7, -0.8, 0.7, 0.8),
    ),
    "I": ((-0.5, -0.8, 0.5, -0.8), (0.0, -0.8, 0.0, 0.8), (-0.5, 0.8, 0.5, 0.8)),
    "arrow": ((-0.8, 0.0, 0.8, 0.0), (0.8, 0.0, 0.3, -0.5), (0.8, 0.0, 0.3, 0.5)),
    "hash": (
        (-0.3, -0.8, -0.3, 0.8),
        (0.3, -0.8, 0.3, 0.8),
        (-0.8, -0.3, 0.8, -0.3),
        (-0.8, 0.3, 0.8, 0.3),
    ),
    "bowtie": ((-0.7, -0.7, 0.7, 0.7), (0.7, 0.7, 0.7, -0.7), (0.7, -0.7, -0.7, 0.7)),
}
SOURCE_GLYPHS = ("L", "T", "X", "plus", "H", "E", "Z", "V", "square", "triangle")
TARGET_GLYPHS = ("F", "K", "N", "Y", "A", "M", "I", "arrow", "hash", "bowtie")
_MAX_STROKES = max(len(s) for s in _STROKES.values())


@dataclass(frozen=True)
class Style:
    """How images are drawn: ranges of the random transform, stroke and noise."""

    rotation: float = 0.35  # radians either way
    scale: tuple[float, float] = (0.7, 1.0)
    shear: float = 0.2
    shift: float = 0.15  # of the half-width
    jitter: float = 0.06  # of each endpoint, standard deviation
    width: tuple[float, float] = (0.09, 0.16)  # stroke half-width, in half-widths of the image
    noise: float = 0.08  # Gaussian pixel noise, standard deviation
    stray_strokes: int = 0  # short strokes at random places


SOURCE_STYLE = Style()
TARGET_STYLE = Style(width=(0.06, 0.12), noise=0.15, stray_strokes=1)


def render(labels: np.ndarray, glyphs: tuple[str, ...], style: Style, seed: int) -> np.ndarray:
    """One (N, 1, SIZE, SIZE) float32 image in [0, 1] per label (an index into glyphs)."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    segments = np.zeros((len(glyphs), _MAX_STROKES, 4))
    for g, name in enumerate(glyphs):
        strokes = _STROKES[name]
        # Pad with the last stroke again: drawing it twice changes nothing.
        segments[g] = [strokes[min(i, len(strokes) - 1)] for i in range(_MAX_STROKES)]
    seg = segments[labels].reshape(n, _MAX_STROKES, 2, 2)  # (n, strokes, endpoint, xy)
    seg = seg + rng.normal(0.0, style.jitter, seg.shape)
    angle = rng.uniform(-style.rotation, style.rotation, n)
    scale = rng.uniform(*style.scale, (n, 2))
    shear = rng.uniform(-style.shear, style.shear, n)
    cos, sin = np.cos(angle), np.sin(angle)
    rotate = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    skew = np.zeros((n, 2, 2))
    skew[:, 0, 0], skew[:, 0, 1], skew[:, 1, 1] = scale[:, 0], shear, scale[:, 1]
    matrix = rotate @ skew
    offset = rng.uniform(-style.shift, style.shift, (n, 1, 1, 2))
    seg = np.einsum("nij,nskj->nski", matrix, seg) + offset
    if style.stray_strokes:
        start = rng.uniform(-0.9, 0.9, (n, style.stray_strokes, 1, 2))
        heading = rng.uniform(0, 2 * np.pi, (n, style.stray_strokes, 1))
        length = rng.uniform(0.2, 0.5, (n, style.stray_strokes, 1, 1))
        step = np.stack([np.cos(heading), np.sin(heading)], -1) * length
        seg = np.concatenate([seg, np.concatenate([start, start + step], 2)], 1)
    width = rng.uniform(*style.width, (n, 1, 1))
    ink = rng.uniform(0.7, 1.0, (n, 1, 1))
    # Distance from every pixel centre to every stroke, anti-aliased over one pixel.
    centres = (np.arange(SIZE) + 0.5) / SIZE * 2 - 1
    px = np.stack(np.meshgrid(centres, centres, indexing="xy"), -1).reshape(1, 1, -1, 2)
    a, b = seg[:, :, :1, :], seg[:, :, 1:, :]
    ab = b - a
    t = np.clip(((px - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-9), 0, 1)
    dist = np.linalg.norm(px - (a + t[..., None] * ab), axis=-1).min(1)  # (n, pixels)
    pixel = 2.0 / SIZE
    image = ink * np.clip((width - dist.reshape(n, 1, -1)) / pixel + 0.5, 0, 1)
    image = image + rng.normal(0.0, style.noise, image.shape)
    return np.clip(image, 0, 1).reshape(n, 1, SIZE, SIZE).astype(np.float32)


@functools.cache
def source_arrays(per_class: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The source task's images and labels, `per_class` of each glyph."""
    labels = np.repeat(np.arange(len(SOURCE_GLYPHS)), per_class)
    images = render(labels, SOURCE_GLYPHS, SOURCE_STYLE, seed)
    return torch.from_numpy(images), torch.from_numpy(labels)


@dataclass(frozen=True)
class GlyphTask:
    """A few-shot target: `shots` training, `val_shots` validation and `test_per_class`
    test images of each target glyph, drawn from `seed`."""

    shots: int
    val_shots: int
    test_per_class: int
    seed: int


# 60 labelled and 50 validation images per glyph: one configuration's test accuracy moves
# with the training seed by a standard deviation of about 0.2% (20 labelled: 1%), and 50
# validation images make Hyperband's cuts and the best-epoch choice steadier than 20 did
# (bench/search_quality.py, docs/benchmarks.md 4c). `-s1` draws other images from the
# same distribution: a related variant, for warm starts.
GLYPH_DATASETS = {
    "builtin:glyphs": GlyphTask(60, 50, 500, seed=1),
    "builtin:glyphs-s1": GlyphTask(60, 50, 500, seed=2),
}
GLYPHS_MEAN = 0.22
GLYPHS_STD = 0.32


def load_glyphs(uri: str, task: GlyphTask) -> Dataset:
    classes = len(TARGET_GLYPHS)
    splits = []
    for part, per_class in enumerate((task.shots, task.val_shots, task.test_per_class)):
        labels = np.repeat(np.arange(classes), per_class)
        images = render(labels, TARGET_GLYPHS, TARGET_STYLE, seed=1000 * task.seed + part)
        splits.append(Split(torch.from_numpy(images), torch.from_numpy(labels)))
    return Dataset(
        uri=uri,
        classes=TARGET_GLYPHS,
        train=splits[0],
        val=splits[1],
        test=splits[2],
        fingerprint=uri,
    )
