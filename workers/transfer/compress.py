"""Compression (magnitude pruning, int8 dynamic quantization) and model cost metrics."""

from __future__ import annotations

import copy
import statistics
import time
import warnings

import torch
from torch import nn
from torch.nn.utils import prune

from tunefleet.spec import Compression
from workers.transfer.errors import ParamError

MB = 2**20
INDEX_BYTES = 4  # one 32-bit index per stored value in a sparse tensor


def compress(model: nn.Module, spec: Compression) -> nn.Module:
    """A compressed copy on the CPU: global L1 pruning of conv and linear weights first,
    then int8 dynamic quantization."""
    model = copy.deepcopy(model).cpu().eval()
    if spec.prune_amount > 0:
        targets = [(m, "weight") for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
        prune.global_unstructured(
            targets, pruning_method=prune.L1Unstructured, amount=spec.prune_amount
        )
        for module, name in targets:
            prune.remove(module, name)
    if spec.quantize_int8:
        # Dynamic quantization covers the linear layers (the head, MLP blocks); convolutions
        # stay in float32.
        try:
            from torch.ao.quantization import quantize_dynamic
        except ImportError as exc:
            raise ParamError(
                "this worker's torch has no int8 dynamic quantization; "
                "set compression.quantize_int8 to false"
            ) from exc
        with warnings.catch_warnings():
            # torch.ao.quantization announces its move to torchao on every call.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            model = quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    return model


def _weights(model: nn.Module) -> list[torch.Tensor]:
    tensors: list[torch.Tensor] = []
    for module in model.modules():
        tensors += list(module.parameters(recurse=False))
        packed = getattr(module, "_packed_params", None)
        if packed is not None and callable(getattr(module, "weight", None)):
            tensors.append(module.weight())
            bias = module.bias()
            if bias is not None:
                tensors.append(bias)
    return tensors


def _nonzero(t: torch.Tensor) -> int:
    values = t.int_repr() if t.is_quantized else t
    return int(torch.count_nonzero(values.detach()).item())


def _stored_bytes(t: torch.Tensor) -> int:
    """Dense bytes, or value + index bytes per non-zero when that is smaller."""
    element = 1 if t.is_quantized else t.element_size()
    dense = t.numel() * element
    return min(dense, _nonzero(t) * (element + INDEX_BYTES))


def count_params(model: nn.Module) -> int:
    """Non-zero weights (pruned ones do not count)."""
    return sum(_nonzero(t) for t in _weights(model))


def size_mb(model: nn.Module) -> float:
    """Storage of weights and buffers in MiB, each tensor dense or sparse, whichever is smaller."""
    total = sum(_stored_bytes(t) for t in _weights(model))
    total += sum(b.numel() * b.element_size() for b in model.buffers())
    return total / MB


@torch.inference_mode()
def latency_ms(
    model: nn.Module, example: torch.Tensor, device: str | torch.device, repeats: int = 20
) -> float:
    """Median wall time of one forward pass on a batch of one image."""
    device = torch.device(device)
    model = model.to(device).eval()
    x = example[:1].to(device)
    timings = []
    for i in range(repeats + 3):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 3:  # warm-up runs do not count
            timings.append((time.perf_counter() - start) * 1000)
    return statistics.median(timings)
