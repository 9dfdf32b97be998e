"""Accuracy under perturbation: Gaussian noise, FGSM, PGD and common corruptions.

All perturbations act on pixels in [0, 1] (the model normalises internally)
and results are clamped back to [0, 1]. Random ones draw from a seeded
generator, so the same model gets the same score.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from tunefleet.spec import CORRUPTIONS, Robustness
from workers.transfer.data import Split, to_float
from workers.transfer.errors import ParamError

BATCH = 256
# Every corruption runs at this ImageNet-C severity (1 to 5).
SEVERITY = 3
# PGD's step size: 2.5 * eps / steps, as in Madry et al. (2018).
PGD_STEP_FACTOR = 2.5


def gaussian_noise(x: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(x.shape, generator=generator).to(x.device)
    return (x + sigma * noise).clamp(0, 1)


def _input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), y)
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """One signed-gradient step of size eps (Goodfellow et al., 2015)."""
    return (x + eps * _input_grad(model, x, y).sign()).clamp(0, 1).detach()


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """L-infinity PGD with a random start (Madry et al., 2018)."""
    alpha = PGD_STEP_FACTOR * eps / steps
    start = (torch.rand(x.shape, generator=generator) * 2 - 1).to(x.device) * eps
    adv = (x + start).clamp(0, 1)
    for _ in range(steps):
        adv = adv + alpha * _input_grad(model, adv, y).sign()
        adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1).detach()
    return adv


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(2 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    return kernel / kernel.sum()


# Each corruption: (images, severity index 0-4, generator) -> corrupted images, in the
# spirit of ImageNet-C and scaled to the image size.
Corrupt = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]


def _blur(x: torch.Tensor, s: int, generator: torch.Generator) -> torch.Tensor:
    # Relative to the image, so that 8x8 digits and 224x224 photos blur alike.
    sigma = [0.5, 0.75, 1.0, 1.5, 2.0][s] * max(1.0, x.shape[-1] / 64)
    k = _gaussian_kernel(sigma).to(x.device, x.dtype)
    c = x.shape[1]
    pad = len(k) // 2
    out = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    out = F.conv2d(out, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    out = F.conv2d(out, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return out.clamp(0, 1)


def _contrast(x: torch.Tensor, s: int, generator: torch.Generator) -> torch.Tensor:
    factor = [0.4, 0.3, 0.2, 0.1, 0.05][s]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * factor + mean).clamp(0, 1)


def _brightness(x: torch.Tensor, s: int, generator: torch.Generator) -> torch.Tensor:
    return (x + [0.1, 0.2, 0.3, 0.4, 0.5][s]).clamp(0, 1)


def _pixelate(x: torch.Tensor, s: int, generator: torch.Generator) -> torch.Tensor:
    size = x.shape[-1]
    small = max(2, round(size * [0.6, 0.5, 0.4, 0.3, 0.25][s]))
    down = F.interpolate(x, size=(small, small), mode="area")
    return F.interpolate(down, size=tuple(x.shape[-2:]), mode="nearest")


def _shot_noise(x: torch.Tensor, s: int, generator: torch.Generator) -> torch.Tensor:
    rate = [60.0, 25.0, 12.0, 5.0, 3.0][s]
    counts = torch.poisson(x.cpu() * rate, generator=generator)
    return (counts / rate).to(x.device).clamp(0, 1)


IMPLEMENTED: dict[str, Corrupt] = {
    "blur": _blur,
    "contrast": _contrast,
    "brightness": _brightness,
    "pixelate": _pixelate,
    "shot_noise": _shot_noise,
}
"""The corruptions this engine implements: the spec's CORRUPTIONS, no more, no fewer."""


def corrupt(
    x: torch.Tensor, name: str, generator: torch.Generator, severity: int = SEVERITY
) -> torch.Tensor:
    """Images under the corruption `name` (one of the spec's CORRUPTIONS) at `severity` 1-5."""
    if name not in IMPLEMENTED:
        raise ParamError(f"corruption {name!r} is unknown; use one of {', '.join(CORRUPTIONS)}")
    return IMPLEMENTED[name](x, severity - 1, generator)


def robust_accuracy(
    model: nn.Module,
    split: Split,
    suite: Robustness,
    *,
    device: str | torch.device,
    seed: int = 0,
) -> tuple[float, dict[str, float]]:
    """Mean accuracy over the suite's components, and each component's accuracy."""
    device = torch.device(device)
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    names = suite.component_names()
    correct = dict.fromkeys(names, 0)
    for start in range(0, len(split), BATCH):
        x = to_float(split.x[start : start + BATCH].to(device))
        y = split.y[start : start + BATCH].to(device)
        perturbed: list[torch.Tensor] = [
            gaussian_noise(x, s, generator) for s in suite.gaussian_sigma
        ]
        perturbed += [fgsm(model, x, y, e) for e in suite.fgsm_eps]
        if suite.pgd is not None:
            perturbed.append(pgd(model, x, y, suite.pgd.eps, suite.pgd.steps, generator))
        perturbed += [corrupt(x, name, generator) for name in suite.corruptions]
        with torch.no_grad():
            for name, xp in zip(names, perturbed, strict=True):
                correct[name] += (model(xp).argmax(1) == y).sum().item()
    components = {name: correct[name] / len(split) for name in names}
    mean = sum(components.values()) / len(components) if components else float("nan")
    return mean, components
