"""Fine-tuning: one loop over a TrainConfig, reporting validation accuracy per epoch."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from tunefleet.spec import KNOWN_PARAMS, Budget
from workers.transfer.data import Dataset, Split, to_float
from workers.transfer.errors import ParamError, TrialPruned
from workers.transfer.features import FeatureCache
from workers.transfer.models import TransferModel

Report = Callable[[int, float], bool]
EVAL_BATCH = 256
# Splits up to this size live on the GPU for the whole trial; larger ones go batch by batch.
DEVICE_RESIDENT_BYTES = 1 << 30


def _default(name: str):
    return KNOWN_PARAMS[name].default


@dataclass
class TrainConfig:
    """How to fine-tune; the hyperparameters' defaults and bounds are the spec's KNOWN_PARAMS."""

    lr: float = _default("lr")  # peak learning rate, annealed by `schedule`
    optimizer: str = _default("optimizer")  # adam | adamw | sgd (momentum 0.9, Nesterov)
    # L2 (adam, sgd) or decoupled (adamw), on every trained weight
    weight_decay: float = _default("weight_decay")
    batch_size: int = _default("batch_size")
    epochs: int = Budget.model_fields["epochs"].default
    # L2-SP: alpha/2 * ||w - w_pretrained||^2 on the unfrozen backbone
    l2sp_alpha: float = _default("l2sp_alpha")
    label_smoothing: float = _default("label_smoothing")
    # 0 is off; 1 is +-15 degrees, 12% shifts, 10% zoom, jitter
    augment_strength: float = _default("augment_strength")
    schedule: str = "cosine"  # cosine (per step, to zero) | constant
    seed: int = 0  # spec seed + trial number
    device: str = "cpu"
    mixed_precision: bool = True  # on CUDA: bf16 autocast, else fp16 with a GradScaler
    channels_last: bool = True  # on CUDA: NHWC convolutions

    def validate(self) -> None:
        """Check the values against the spec's bounds (KNOWN_PARAMS), the one place they live."""
        problems = [
            f"{name} {why}"
            for name in _SPEC_PARAMS
            if (why := KNOWN_PARAMS[name].problem_with(getattr(self, name))) is not None
        ]
        if self.schedule not in ("cosine", "constant"):
            problems.append(f"schedule {self.schedule!r} is unknown; use cosine or constant")
        if self.epochs < 1:
            problems.append(f"epochs must be >= 1, got {self.epochs}")
        if problems:
            raise ParamError("; ".join(problems))


# The TrainConfig fields that are hyperparameters of the spec.
_SPEC_PARAMS = (
    "lr",
    "optimizer",
    "weight_decay",
    "batch_size",
    "l2sp_alpha",
    "label_smoothing",
    "augment_strength",
)


@dataclass
class FitResult:
    epochs_ran: int
    best_epoch: int
    best_val_accuracy: float
    val_history: list[float] = field(default_factory=list)
    feature_cache: str = "off"  # hit | miss | off | too_large
    precision: str = "float32"
    train_s: float = 0.0


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU has it, else fp16 (with a GradScaler); None on the CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, enabled: bool = True):
    dtype = autocast_dtype(device) if enabled else None
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def place(split_x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The tensor on the device when it fits, through pinned memory on CUDA."""
    if device.type != "cuda":
        return split_x
    if split_x.numel() * split_x.element_size() > DEVICE_RESIDENT_BYTES:
        return split_x.pin_memory()
    return split_x.pin_memory().to(device, non_blocking=True)


def take(x: torch.Tensor, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Rows `idx` of `x` on the device (x already there, or pinned on the CPU)."""
    if x.device.type != "cpu" or device.type == "cpu":
        # Compare types, not devices: "cuda" and "cuda:0" are the same GPU.
        return x[idx.to(x.device)]
    batch = x[idx]
    if device.type == "cuda":
        batch = batch.pin_memory()
    return batch.to(device, non_blocking=True)


def augment(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Random affine (rotation, shift, zoom) and brightness/contrast jitter, per image."""
    n = x.shape[0]

    def uniform(scale: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator) * 2 - 1) * scale

    angle = uniform(math.radians(15) * strength)
    zoom = 1 + uniform(0.1 * strength)
    tx, ty = uniform(0.25 * strength), uniform(0.25 * strength)  # in [-1, 1] grid units
    gain, bias = 1 + uniform(0.2 * strength), uniform(0.1 * strength)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1).to(
        x.device, x.dtype
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    x = x * gain.to(x.device).view(-1, 1, 1, 1) + bias.to(x.device).view(-1, 1, 1, 1)
    return x.clamp_(0, 1)


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay
        )
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@torch.no_grad()
def predict(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    device: torch.device,
    *,
    raw_pixels: bool,
    mixed_precision: bool = True,
) -> torch.Tensor:
    """Outputs of `forward` over `x` in batches, on the CPU."""
    outputs = []
    for start in range(0, len(x), EVAL_BATCH):
        idx = torch.arange(start, min(start + EVAL_BATCH, len(x)))
        xb = take(x, idx, device)
        if raw_pixels:
            xb = to_float(xb)
        with autocast(device, mixed_precision):
            outputs.append(forward(xb).float().cpu())
    return torch.cat(outputs)


def accuracy(model: nn.Module, split: Split, device: str | torch.device) -> float:
    """Clean top-1 accuracy of `model` on a split of raw images."""
    device = torch.device(device)
    model.eval()
    logits = predict(model, place(split.x, device), device, raw_pixels=True)
    return (logits.argmax(1) == split.y).float().mean().item()


@torch.no_grad()
def _features_fit(
    model: TransferModel, data: Dataset, cache: FeatureCache, device: torch.device
) -> bool:
    """Whether the frozen features of train and val fit the cache (early layers are big)."""
    model.eval()
    with autocast(device):
        one = model.frozen_features(to_float(data.train.x[:1].to(device))).float()
    return one.numel() * 4 * (len(data.train) + len(data.val)) <= cache.max_bytes


def cached_features(
    model: TransferModel, data: Dataset, cfg: TrainConfig, cache: FeatureCache, cache_key: tuple
) -> tuple[torch.Tensor, torch.Tensor, str] | None:
    """(train, val) features of the frozen part on the device and "hit" or "miss";
    None when they do not fit the cache."""
    device = torch.device(cfg.device)
    if not _features_fit(model, data, cache, device):
        return None
    model.eval()
    splits = []
    hits = []
    for name, split in (("train", data.train), ("val", data.val)):
        x, hit = cache.get_or_compute(
            (*cache_key, name, model.cut),
            lambda split=split: predict(
                model.frozen_features,
                place(split.x, device),
                device,
                raw_pixels=True,
                mixed_precision=cfg.mixed_precision,
            ),
        )
        splits.append(place(x, device))
        hits.append(hit)
    return splits[0], splits[1], "hit" if all(hits) else "miss"


def fine_tune(
    model: TransferModel,
    data: Dataset,
    cfg: TrainConfig,
    report: Report,
    *,
    feature_cache: FeatureCache | None = None,
    cache_key: tuple = (),
) -> FitResult:
    """Train the unfrozen part of `model` on data.train; restore the best epoch on data.val.

    Raises TrialPruned when `report(epoch, val_accuracy)` returns True.
    """
    cfg.validate()
    started = time.perf_counter()
    device = torch.device(cfg.device)
    model.to(device)
    if device.type == "cuda" and cfg.channels_last:
        # NHWC convolutions, which tensor cores run fastest (bench/gpu.py measures it);
        # only 4-D weights change, and saved weights are made contiguous again.
        model.to(memory_format=torch.channels_last)
    dtype = autocast_dtype(device) if cfg.mixed_precision else None
    precision = str(dtype).removeprefix("torch.") if dtype else "float32"

    # With nothing to augment, the frozen part's output is the same in every trial.
    features = (
        cached_features(model, data, cfg, feature_cache, cache_key)
        if feature_cache is not None and cfg.augment_strength == 0
        else None
    )
    cache_state = "off" if feature_cache is None or cfg.augment_strength > 0 else "too_large"
    cached = isinstance(features, tuple)
    if cached:
        train_x, val_x, cache_state = features
        forward = model.forward_from_frozen
    else:
        train_x, val_x = place(data.train.x, device), place(data.val.x, device)
        forward = model
    train_y = data.train.y.to(device)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg)
    steps_per_epoch = math.ceil(len(train_y) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)),
        )
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    anchors = (
        {name: p.detach().clone() for name, p in model.backbone_trainable()}
        if cfg.l2sp_alpha > 0
        else {}
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    jitter = torch.Generator().manual_seed(cfg.seed + 1)

    history: list[float] = []
    best_acc, best_epoch, best_state = -1.0, 0, None
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = torch.randperm(len(train_y), generator=shuffle)
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            if len(idx) < 2 and len(order) > 1:
                continue  # a batch of one breaks batch norm in training mode
            xb = take(train_x, idx, device)
            yb = train_y[idx.to(train_y.device)]
            if not cached:
                xb = to_float(xb)
                if cfg.augment_strength > 0:
                    xb = augment(xb, cfg.augment_strength, jitter)
            with autocast(device, cfg.mixed_precision):
                logits = forward(xb)
            loss = criterion(logits.float(), yb)
            if anchors:
                pull = sum(
                    (p - anchors[name]).pow(2).sum() for name, p in model.backbone_trainable()
                )
                loss = loss + 0.5 * cfg.l2sp_alpha * pull
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()

        model.eval()
        val_logits = predict(
            forward, val_x, device, raw_pixels=not cached, mixed_precision=cfg.mixed_precision
        )
        val_acc = (val_logits.argmax(1) == data.val.y).float().mean().item()
        history.append(val_acc)
        if val_acc > best_acc:
            best_acc, best_epoch = val_acc, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if report(epoch, val_acc):
            raise TrialPruned(epoch, val_acc)

    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return FitResult(
        epochs_ran=len(history),
        best_epoch=best_epoch,
        best_val_accuracy=best_acc,
        val_history=history,
        feature_cache=cache_state,
        precision=precision,
        train_s=time.perf_counter() - started,
    )
