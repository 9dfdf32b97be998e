"""Reading and writing weight files safely, and hashing their contents.

Weights load with safetensors or with `torch.load(weights_only=True)`. A pickle
that needs anything beyond tensors and plain containers is refused: there is
deliberately no fallback to full unpickling, which would run the file's code.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from workers.transfer.errors import SourceModelError, UnsafeWeightsError

StateDict = dict[str, torch.Tensor]


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors file starts with a little-endian header length, then '{'."""
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    header_len = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < header_len < path.stat().st_size


def load_weights(path: str | Path, *, shown: str | None = None) -> tuple[StateDict, dict[str, str]]:
    """Load a state dict and its string metadata from a safetensors or PyTorch file.

    ``shown`` is how the user wrote the path: the public part of an error names
    only that, the detail names the file on this worker.
    """
    path = Path(path).expanduser()
    shown = repr(shown if shown is not None else str(path))
    if not path.is_file():
        raise SourceModelError(
            f"weights file {path} does not exist on this worker",
            public=f"no weights file {shown} on the worker; copy it there or fix the path",
            code="weights_missing",
        )
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                metadata = dict(f.metadata() or {})
                tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
        except Exception as exc:
            raise SourceModelError(
                f"{path} is not a readable safetensors file: {exc}",
                public=f"{shown} is not a readable safetensors file",
                code="weights_unreadable",
            ) from exc
        return tensors, metadata
    return _load_torch_file(path, shown)


def _load_torch_file(path: Path, shown: str) -> tuple[StateDict, dict[str, str]]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # Keep torch's line that names the refused global; drop its advice to unpickle fully.
        lines = [ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln or "global" in ln]
        reason = lines[0] if lines else type(exc).__name__
        advice = (
            "it is a pickle that holds more than tensors, and loading it could run code"
            f" ({reason}). Save only the weights, with torch.save(model.state_dict(), path) "
            "or safetensors.torch.save_file."
        )
        raise UnsafeWeightsError(
            f"{path} refused: {advice}", public=f"{shown} refused: {advice}"
        ) from None
    except Exception as exc:
        raise SourceModelError(
            f"cannot read {path} as a safetensors file or a PyTorch state dict: {exc}",
            public=f"cannot read {shown} as a safetensors file or a PyTorch state dict",
            code="weights_unreadable",
        ) from exc
    metadata: dict[str, str] = {}
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        # A checkpoint dict such as {"arch": ..., "state_dict": ...}.
        metadata = {k: str(v) for k, v in obj.items() if isinstance(v, str | int | float)}
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        advice = f"holds a {type(obj).__name__}, not a state dict; save model.state_dict()"
        raise SourceModelError(f"{path} {advice}", public=f"{shown} {advice}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise SourceModelError(
            f"{path} is not a plain state dict (entries {bad[:3]} are not name -> tensor)",
            public=f"{shown} is not a plain state dict (some entries are not name -> "
            "tensor); save model.state_dict()",
        )
    return dict(obj), metadata


def state_dict_hash(state_dict: StateDict) -> str:
    """Content hash of a state dict: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_weights(path: Path, state_dict: StateDict, metadata: dict[str, object]) -> None:
    """Write a safetensors file atomically; metadata values are stored as JSON strings."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
