"""Target datasets by URI, held in memory with fixed train/validation/test splits.

Images are kept at the dataset's own resolution as pixel values in [0, 1]
(uint8 for image folders, float32 for the built-in digits); the model's
input adapter resizes and normalises them. Perturbations for the robustness
suite therefore act in pixel space. The built-in digits tasks are in
builtin_tasks.py; image folders are here.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from workers.transfer.access import FileAccess
from workers.transfer.errors import DatasetError

SPLIT_SEED = 0
VAL_FRACTION = 0.2
TEST_FRACTION = 0.2
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class InputSpec:
    """What a source model expects: channels, square size, normalisation."""

    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"  # as timm and torchvision name it: bilinear, bicubic, ...
    crop_pct: float = 1.0  # resize the shorter side to size / crop_pct, then centre-crop


@dataclass(frozen=True)
class Split:
    """Images (N, C, H, W) in [0, 1] (uint8 scaled by 255, or float32) and int64 labels."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Dataset:
    uri: str
    classes: tuple[str, ...]
    train: Split
    val: Split
    test: Split
    fingerprint: str  # changes when the files change; part of the feature cache key

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @functools.cached_property
    def content_hash(self) -> str:
        """sha256 of the classes and of every split's images and labels, as loaded."""
        digest = hashlib.sha256("\n".join(self.classes).encode())
        for split in (self.train, self.val, self.test):
            for tensor in (split.x, split.y):
                digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
                digest.update(tensor.contiguous().numpy().tobytes())
        return digest.hexdigest()


def to_float(x: torch.Tensor) -> torch.Tensor:
    """Pixel values in [0, 1] as float32, whichever way they are stored."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x.float()


def stratified_split(
    labels: np.ndarray, *, val_fraction: float, test_fraction: float, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of train, validation and test, per class, from a fixed seed."""
    rng = np.random.default_rng(seed)
    parts: tuple[list[int], list[int], list[int]] = ([], [], [])
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        rng.shuffle(idx)
        # At least one image of each class in a split that is asked for at all.
        n_val = max(1, round(len(idx) * val_fraction)) if val_fraction > 0 else 0
        n_test = max(1, round(len(idx) * test_fraction)) if test_fraction > 0 else 0
        parts[1].extend(idx[:n_val])
        parts[2].extend(idx[n_val : n_val + n_test])
        parts[0].extend(idx[n_val + n_test :])
    return tuple(np.sort(np.asarray(p, dtype=np.int64)) for p in parts)  # type: ignore[return-value]


_DATASETS: dict[tuple, Dataset] = {}
_LOCK = threading.Lock()


def load_dataset(uri: str, input_spec: InputSpec, *, access: FileAccess | None = None) -> Dataset:
    """The dataset named by `uri`, loaded once per process (per input size for folders).

    An `imagefolder:` path must lie under the worker's data roots (`access`, by
    default this process's TUNEFLEET_* settings); the folder is walked within
    the access limits before a single image is decoded.
    """
    if not isinstance(uri, str) or ":" not in uri:
        raise DatasetError(
            f"dataset {uri!r} is not a URI; use builtin:digits-5to9 or imagefolder:<path>"
        )
    scheme, _, rest = uri.partition(":")
    if scheme == "builtin":
        # Here, not at the top: the built-in tasks are Datasets of this module.
        from workers.transfer.builtin_tasks import load_builtin

        with _LOCK:
            if (uri,) not in _DATASETS:
                _DATASETS[(uri,)] = load_builtin(uri)
            return _DATASETS[(uri,)]
    if scheme != "imagefolder":
        raise DatasetError(
            f"unknown dataset scheme {scheme!r} in {uri!r}; use builtin:digits-5to9 "
            "or imagefolder:<path>"
        )
    access = access or FileAccess.from_env()
    root = access.dataset_path(rest, uri)
    listing = _scan(root, rest, access)
    key = (
        uri,
        str(root),
        input_spec.channels,
        input_spec.size,
        input_spec.interpolation,
        input_spec.crop_pct,
        listing.fingerprint(),
    )
    with _LOCK:
        if key not in _DATASETS:
            _DATASETS[key] = _load_imagefolder(uri, rest, listing, input_spec)
        return _DATASETS[key]


@dataclass
class _Listing:
    """What one bounded walk of a dataset folder found: folders and image files."""

    root: Path
    dirs: set[tuple[str, ...]]
    images: list[tuple[tuple[str, ...], Path, int, int]]  # parts, path, size, mtime_ns

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for parts, _, size, mtime in self.images:
            digest.update(f"{'/'.join(parts)}:{size}:{mtime}".encode())
        return digest.hexdigest()


def _scan(root: Path, written: str, access: FileAccess) -> _Listing:
    """Walk the folder, counting every entry against the limit; links must stay in the roots."""
    if not root.is_dir():
        raise DatasetError(
            f"dataset: {root} (from {written!r}) is not a directory on this worker",
            public=f"dataset: no image found under {written!r}",
            code="dataset_empty",
        )
    listing = _Listing(root=root, dirs=set(), images=[])
    stack: list[tuple[Path, tuple[str, ...]]] = [(root, ())]
    walked = 0
    while stack:
        folder, parts = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            raise DatasetError(
                f"dataset: cannot list {folder}: {exc}",
                public=f"dataset: a folder under {written!r} cannot be read on the worker",
                code="dataset_unreadable",
            ) from None
        walked += len(entries)
        if walked > access.max_files:
            raise DatasetError(
                f"dataset: {root} holds more than {access.max_files} entries",
                public=f"dataset: {written!r} holds more than {access.max_files} files and "
                "folders, the limit of this fleet (TUNEFLEET_DATASET_MAX_FILES); point it at "
                "a smaller folder",
                code="dataset_too_large",
            )
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            if entry.is_symlink() and not access.inside_data_roots(path):
                raise DatasetError(
                    f"dataset: {path} links to {os.path.realpath(path)}, outside the data roots",
                    public=f"dataset: a link under {written!r} points outside the data roots",
                    code="path_not_allowed",
                )
            child = (*parts, entry.name)
            if entry.is_dir():
                listing.dirs.add(child)
                stack.append((path, child))
            elif entry.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
                stat = entry.stat()
                listing.images.append((child, path, stat.st_size, stat.st_mtime_ns))
    listing.images.sort()
    if len(listing.images) > access.max_images:
        raise DatasetError(
            f"dataset: {root} holds {len(listing.images)} images",
            public=f"dataset: {written!r} holds more than {access.max_images} images, the "
            "limit of this fleet (TUNEFLEET_DATASET_MAX_IMAGES); use a smaller folder",
            code="dataset_too_large",
        )
    return listing


def _class_folders(listing: _Listing, base: tuple[str, ...], written: str) -> dict[str, list]:
    depth = len(base)
    names = sorted(d[depth] for d in listing.dirs if len(d) == depth + 1 and d[:depth] == base)
    classes: dict[str, list[Path]] = {name: [] for name in names}
    for parts, path, _, _ in listing.images:
        if len(parts) >= depth + 2 and parts[:depth] == base and parts[depth] in classes:
            classes[parts[depth]].append(path)
    where = "/".join(base)
    if not any(classes.values()):
        raise DatasetError(
            f"dataset: no image in class folders of {listing.root / where} (found {names[:20]})",
            public=f"dataset: no image found under {written!r}"
            + (f" in {where}/" if where else "")
            + "; put the images of each class in <folder>/<class name>/ "
            "(or <folder>/train/<class name>/ ...)",
            code="dataset_empty",
        )
    empty = [name for name, files in classes.items() if not files]
    if empty:
        raise DatasetError(
            f"dataset: class folder(s) {', '.join(empty)} in {listing.root / where} hold no images",
            public=f"dataset: {len(empty)} class folder(s) under {written!r} hold no images "
            f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folders",
            code="dataset_empty",
        )
    return classes


def _load_imagefolder(uri: str, written: str, listing: _Listing, spec: InputSpec) -> Dataset:
    """<root>/<class>/* split here, or <root>/{train,val,test}/<class>/* as given."""
    if ("train",) in listing.dirs:
        train = _class_folders(listing, ("train",), written)
        given = {
            name: _class_folders(listing, (alias,), written)
            for name, aliases in (("val", ("val", "validation")), ("test", ("test",)))
            for alias in aliases
            if (alias,) in listing.dirs
        }
        for name, folders in given.items():
            if set(folders) != set(train):
                raise DatasetError(
                    f"{uri}: the classes of {name}/ ({sorted(folders)}) differ from those of "
                    f"train/ ({sorted(train)})",
                    public=f"dataset: under {written!r}, {name}/ and train/ hold different "
                    "class folders; every split needs the same class folders",
                )
        classes = tuple(sorted(train))
        splits = {"train": _files_and_labels(train, classes)}
        for name, folders in given.items():
            splits[name] = _files_and_labels(folders, classes)
        missing = [name for name in ("val", "test") if name not in splits]
        if missing:
            # Carve the missing splits out of train/, per class, with the fixed seed.
            files, labels = splits["train"]
            _check_class_sizes(written, classes, labels, need=1 + len(missing))
            tr, va, te = stratified_split(
                labels,
                val_fraction=VAL_FRACTION if "val" in missing else 0.0,
                test_fraction=TEST_FRACTION if "test" in missing else 0.0,
            )
            carved = {"val": va, "test": te}
            for name in missing:
                splits[name] = ([files[i] for i in carved[name]], labels[carved[name]])
            splits["train"] = ([files[i] for i in tr], labels[tr])
    else:
        folders = _class_folders(listing, (), written)
        classes = tuple(sorted(folders))
        files, labels = _files_and_labels(folders, classes)
        _check_class_sizes(written, classes, labels, need=3)
        tr, va, te = stratified_split(
            labels, val_fraction=VAL_FRACTION, test_fraction=TEST_FRACTION
        )
        splits = {
            name: ([files[i] for i in idx], labels[idx])
            for name, idx in (("train", tr), ("val", va), ("test", te))
        }
    if len(classes) < 2:
        raise DatasetError(
            f"{uri}: found one class ({classes[0]})",
            public=f"dataset: found one class folder under {written!r}; classification "
            "needs at least two class folders",
        )
    loaded = {
        name: _read_images(written, files, labels, spec) for name, (files, labels) in splits.items()
    }
    return Dataset(
        uri=uri,
        classes=classes,
        train=loaded["train"],
        val=loaded["val"],
        test=loaded["test"],
        fingerprint=f"{uri}#{listing.root}#{listing.fingerprint()}",
    )


def _files_and_labels(
    folders: dict[str, list[Path]], classes: tuple[str, ...]
) -> tuple[list[Path], np.ndarray]:
    files = [f for name in classes for f in folders[name]]
    labels = np.asarray([i for i, name in enumerate(classes) for _ in folders[name]])
    return files, labels


def _check_class_sizes(
    written: str, classes: tuple[str, ...], labels: np.ndarray, need: int
) -> None:
    counts = np.bincount(labels, minlength=len(classes))
    small = [f"{classes[i]} ({c})" for i, c in enumerate(counts) if c < need]
    if small:
        raise DatasetError(
            f"dataset {written!r}: class(es) {', '.join(small)} have fewer than {need} images",
            public=f"dataset: {len(small)} class folder(s) under {written!r} have fewer than "
            f"{need} images; each class needs at least one image in every split (add images, "
            "or provide train/, val/ and test/ folders)",
        )


def _read_images(written: str, files: list[Path], labels: np.ndarray, spec: InputSpec) -> Split:
    """Decode, resize (shorter side, to size / crop_pct with the model's interpolation)
    and centre-crop to the model's input size, as uint8."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms import v2

    mode = "L" if spec.channels == 1 else "RGB"  # grayscale expands to RGB here
    resize = v2.Compose(
        [
            v2.Resize(
                round(spec.size / spec.crop_pct),
                interpolation=v2.InterpolationMode(spec.interpolation),
                antialias=True,
            ),
            v2.CenterCrop(spec.size),
        ]
    )
    out = torch.empty((len(files), spec.channels, spec.size, spec.size), dtype=torch.uint8)
    for i, path in enumerate(files):
        try:
            with Image.open(path) as image:
                array = np.asarray(image.convert(mode), dtype=np.uint8)
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError) as exc:
            raise DatasetError(
                f"dataset: cannot decode {path} ({exc})",
                public=f"dataset: an image under {written!r} cannot be decoded; remove or "
                "replace the files that are not images",
                code="dataset_unreadable",
            ) from None
        tensor = torch.from_numpy(array.copy())
        tensor = tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)
        out[i] = resize(tensor)
    return Split(out, torch.as_tensor(labels, dtype=torch.int64))
