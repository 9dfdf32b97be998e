"""Where a study may read files: the data and model roots the operator sets.

A spec names files in three places: ``dataset: imagefolder:<path>``,
``source_model: file:<path>`` and ``source_weights: <path>``. Each path must
lie, once resolved (``..`` and symlinks included), under one of the roots:
``TUNEFLEET_DATA_ROOTS`` for datasets, ``TUNEFLEET_MODEL_ROOTS`` for weights.
The API checks it when a study is created and the worker checks it again
before it opens anything. No roots means no files at all: only the built-in
dataset and model can run.

A root may hold ``{owner}`` as one of its parts (``/data/{owner}``): the owner
of the study takes its place, so each owner reads only their own folder. A
relative path resolves against each root in turn (the first where it exists,
on a worker), and is refused if it leaves any of them. The messages name what
the user wrote and never say whether a path exists.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = [
    "OWNER",
    "PathNotAllowed",
    "is_under_roots",
    "parse_roots",
    "resolve_under_roots",
]

OWNER = "{owner}"


class PathNotAllowed(ValueError):
    """A path lies outside every allowed root (or no root is set)."""


def parse_roots(value: object) -> list[str]:
    """Roots from a setting: a list, or one string split on commas (or os.pathsep)."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            value = json.loads(text)
        else:
            sep = "," if "," in text else os.pathsep
            value = [part for part in text.split(sep)]
    roots = [str(part).strip() for part in value]  # type: ignore[union-attr]
    roots = [root for root in roots if root]
    for root in roots:
        if not os.path.isabs(root):
            raise ValueError(f"root {root!r} must be an absolute directory")
        if any(OWNER in part and part != OWNER for part in Path(root).parts):
            raise ValueError(f"root {root!r}: {OWNER} must be a whole part of the path")
    return roots


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(path))


def _owner_ok(owner: str | None) -> bool:
    return bool(owner) and "/" not in owner and owner not in (".", "..")  # type: ignore[operator]


def _concrete_roots(roots: Iterable[str | Path], owner: str | None) -> list[Path]:
    """The roots as resolved directories; ``{owner}`` roots need a usable owner."""
    out = []
    for root in roots:
        text = str(root)
        if OWNER in text:
            if not _owner_ok(owner):
                continue
            text = text.replace(OWNER, owner)  # type: ignore[arg-type]
        out.append(_real(text))
    return out


def _matches_pattern(path: Path, root: str) -> bool:
    """Whether a resolved path lies under an ``{owner}`` root for some owner."""
    parts = Path(root).parts
    cut = parts.index(OWNER)
    prefix = _real(Path(*parts[:cut]))
    try:
        rest = path.relative_to(prefix).parts
    except ValueError:
        return False
    suffix = parts[cut + 1 :]
    if len(rest) < 1 + len(suffix) or not _owner_ok(rest[0]):
        return False
    return rest[1 : 1 + len(suffix)] == tuple(suffix)


def is_under_roots(path: Path, roots: Sequence[str | Path], *, owner: str | None) -> bool:
    """Whether a resolved path lies under a root; without an owner, an ``{owner}``
    root admits any single owner folder."""
    real = _real(path)
    for root in _concrete_roots(roots, owner):
        if real == root or real.is_relative_to(root):
            return True
    if owner is None:
        return any(_matches_pattern(real, str(r)) for r in roots if OWNER in str(r))
    return False


def resolve_under_roots(
    written: str,
    roots: Sequence[str | Path],
    *,
    owner: str | None,
    field: str,
    setting: str,
    prefer_existing: bool = False,
) -> Path:
    """The resolved path of what the user wrote, or PathNotAllowed naming only that.

    ``prefer_existing`` (the worker) picks, among the roots a relative path may
    resolve against, the first where it exists.
    """
    if not roots:
        raise PathNotAllowed(
            f"{field}: {written!r} names a file path, and this fleet allows none "
            f"(the operator sets {setting}); use a built-in one or ask for a root"
        )
    refused = PathNotAllowed(
        f"{field}: {written!r} is not under an allowed root ({setting}); write a path "
        "relative to your root, or an absolute one under it"
    )
    if "\x00" in written or not written.strip():
        raise refused
    if os.path.isabs(written):
        if is_under_roots(Path(written), roots, owner=owner):
            return _real(written)
        raise refused
    candidates = [(_real(root / written), root) for root in _concrete_roots(roots, owner)]
    # A relative path that leaves any root (`..`, a link) is refused outright.
    if not candidates or any(not path.is_relative_to(root) for path, root in candidates):
        raise refused
    candidates = [path for path, _ in candidates]
    if prefer_existing:
        for candidate in candidates:
            if candidate.exists():
                return candidate
    return candidates[0]
