"""Accuracy under perturbation: Gaussian noise, FGSM, PGD and common corruptions.

All perturbations act on pixels in [0, 1] (the model normalises internally)
and results are clamped back to [0, 1]. Random ones draw from a seeded
generator, so the same model gets the same score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from workers.transfer.data import Split, to_float
from workers.transfer.errors import ParamError

BATCH = 256
DEFAULT_SEVERITY = 3
CORRUPTIONS = ("blur", "contrast", "brightness", "pixelate", "shot_noise")


@dataclass
class RobustnessSuite:
    gaussian_sigma: list[float] = field(default_factory=lambda: [0.1, 0.3])
    fgsm_eps: list[float] = field(default_factory=lambda: [0.03])
    pgd_eps: float | None = 0.03
    pgd_steps: int = 5
    pgd_alpha: float | None = None  # step size; 2.5 * eps / steps when None
    corruptions: list[tuple[str, int]] = field(
        default_factory=lambda: [("blur", DEFAULT_SEVERITY), ("contrast", DEFAULT_SEVERITY)]
    )

    @classmethod
    def from_spec(cls, spec: dict | None) -> RobustnessSuite:
        """Read the spec's `robustness` section; missing keys keep the defaults."""
        suite = cls()
        if not spec:
            return suite
        if not isinstance(spec, dict):
            raise ParamError("robustness must be a mapping such as {gaussian_sigma: [0.1]}")
        if "gaussian_sigma" in spec:
            suite.gaussian_sigma = [float(s) for s in spec["gaussian_sigma"] or []]
        if "fgsm_eps" in spec:
            suite.fgsm_eps = [float(e) for e in spec["fgsm_eps"] or []]
        if "pgd" in spec:
            pgd = spec["pgd"]
            if not pgd:
                suite.pgd_eps = None
            else:
                suite.pgd_eps = float(pgd.get("eps", 0.03))
                suite.pgd_steps = int(pgd.get("steps", 5))
                alpha = pgd.get("alpha", pgd.get("step_size"))
                suite.pgd_alpha = None if alpha is None else float(alpha)
        if "corruptions" in spec:
            suite.corruptions = []
            for item in spec["corruptions"] or []:
                if isinstance(item, dict):
                    name, severity = item.get("name"), int(item.get("severity", DEFAULT_SEVERITY))
                else:
                    name, severity = item, DEFAULT_SEVERITY
                if name not in CORRUPTIONS or not 1 <= severity <= 5:
                    raise ParamError(
                        f"corruption {item!r}: use one of {', '.join(CORRUPTIONS)} "
                        "with severity 1 to 5"
                    )
                suite.corruptions.append((name, severity))
        if any(s < 0 for s in suite.gaussian_sigma) or any(e < 0 for e in suite.fgsm_eps):
            raise ParamError("gaussian_sigma and fgsm_eps values must be >= 0")
        if suite.pgd_eps is not None and (suite.pgd_eps < 0 or suite.pgd_steps < 1):
            raise ParamError("pgd needs eps >= 0 and steps >= 1")
        return suite

    def component_names(self) -> list[str]:
        names = [f"gaussian_{s:g}" for s in self.gaussian_sigma]
        names += [f"fgsm_{e:g}" for e in self.fgsm_eps]
        if self.pgd_eps is not None:
            names.append(f"pgd_{self.pgd_eps:g}")
        names += [
            name if severity == DEFAULT_SEVERITY else f"{name}_s{severity}"
            for name, severity in self.corruptions
        ]
        return names


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
    alpha: float | None,
    generator: torch.Generator,
) -> torch.Tensor:
    """L-infinity PGD with a random start (Madry et al., 2018)."""
    alpha = 2.5 * eps / steps if alpha is None else alpha
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


def corrupt(x: torch.Tensor, name: str, severity: int, generator: torch.Generator) -> torch.Tensor:
    """A common corruption in the spirit of ImageNet-C, scaled to the image size."""
    s = severity - 1
    if name == "blur":
        # Relative to the image, so that 8x8 digits and 224x224 photos blur alike.
        sigma = [0.5, 0.75, 1.0, 1.5, 2.0][s] * max(1.0, x.shape[-1] / 64)
        k = _gaussian_kernel(sigma).to(x.device, x.dtype)
        c = x.shape[1]
        pad = len(k) // 2
        out = F.pad(x, (pad, pad, pad, pad), mode="replicate")
        out = F.conv2d(out, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
        out = F.conv2d(out, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
        return out.clamp(0, 1)
    if name == "contrast":
        factor = [0.4, 0.3, 0.2, 0.1, 0.05][s]
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return ((x - mean) * factor + mean).clamp(0, 1)
    if name == "brightness":
        return (x + [0.1, 0.2, 0.3, 0.4, 0.5][s]).clamp(0, 1)
    if name == "pixelate":
        size = x.shape[-1]
        small = max(2, round(size * [0.6, 0.5, 0.4, 0.3, 0.25][s]))
        down = F.interpolate(x, size=(small, small), mode="area")
        return F.interpolate(down, size=tuple(x.shape[-2:]), mode="nearest")
    if name == "shot_noise":
        rate = [60.0, 25.0, 12.0, 5.0, 3.0][s]
        counts = torch.poisson(x.cpu() * rate, generator=generator)
        return (counts / rate).to(x.device).clamp(0, 1)
    raise ParamError(f"corruption {name!r} is unknown; use one of {', '.join(CORRUPTIONS)}")


def robust_accuracy(
    model: nn.Module,
    split: Split,
    suite: RobustnessSuite,
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
        if suite.pgd_eps is not None:
            perturbed.append(
                pgd(model, x, y, suite.pgd_eps, suite.pgd_steps, suite.pgd_alpha, generator)
            )
        perturbed += [corrupt(x, n, sev, generator) for n, sev in suite.corruptions]
        with torch.no_grad():
            for name, xp in zip(names, perturbed, strict=True):
                correct[name] += (model(xp).argmax(1) == y).sum().item()
    components = {name: correct[name] / len(split) for name in names}
    mean = sum(components.values()) / len(components) if components else float("nan")
    return mean, components
