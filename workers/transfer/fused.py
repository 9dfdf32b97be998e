"""Several trials of one study trained together: head-only trials fused on cached features.

A head-only trial (``unfreeze_blocks`` 0, no augmentation) trains its head on the
frozen backbone's features, which every trial of the study shares (the feature
cache). Trials whose heads have the same shape (depth, width, activation) and
that take the same steps (batch size, epochs, optimizer) form a stack: at each
step their inputs, weights and dropout masks are stacked and each layer is one
batched matrix multiplication for the whole stack, forward and backward. What
stays per trial is what makes it that trial: its head initialised from its
seed, its batch order, its dropout masks (drawn from its own generator, in the
order a lone trial draws them), its learning rate, weight decay, label
smoothing and schedule (its own optimizer and scheduler over its own
weights), its validation value reported after each epoch and its best epoch
restored. On the CPU a fused trial ends with the weights it would have had
alone, up to the rounding of a batched matmul (a test holds the accuracy
equal within 1e-4); on CUDA the dropout masks come from another generator than
the fused dropout kernel's, so a fused trial with dropout is a different draw
of the same trial.

A trial that cannot fuse (unfrozen blocks, augmentation, features too large
for the cache, or a stack of one) trains alone as run_trial would. A pruned or
abandoned trial leaves its stack; the others go on.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunefleet.protocol import Assignment
from workers.transfer.errors import TrialPruned
from workers.transfer.features import FEATURES, FeatureCache
from workers.transfer.train import (
    EVAL_BATCH,
    FitResult,
    Report,
    autocast,
    autocast_dtype,
    cached_features,
    fine_tune,
    make_optimizer,
    take,
)
from workers.transfer.trial import PreparedTrial, TrialResult, finish_trial, prepare_trial

__all__ = ["fusable", "run_trials", "stack_key"]

# What a trial ends with: its result, or the exception that ended it (TrialPruned included).
Outcome = TrialResult | BaseException


def fusable(trial: PreparedTrial) -> bool:
    """Whether the trial trains its head only on features the cache can hold."""
    return trial.model.unfrozen_stages == 0 and trial.cfg.augment_strength == 0


def stack_key(trial: PreparedTrial) -> tuple:
    """Trials with the same key train in one stack."""
    p, cfg = trial.params, trial.cfg
    return (
        trial.cache_key,
        trial.model.cut,
        p["head_depth"],
        p["head_width"],
        p["activation"],
        cfg.batch_size,
        cfg.epochs,
        cfg.optimizer,
        cfg.device,
        cfg.mixed_precision,
    )


def run_trials(
    assignments: Sequence[Assignment | Mapping[str, Any]],
    reports: Sequence[Report],
    *,
    device: str = "cpu",
    cache_dir: Path,
    artifact_dir: Path,
    feature_cache: FeatureCache | None = FEATURES,
) -> list[Outcome]:
    """Run the trials, the fusable ones in stacks; one outcome per trial, in order.

    `reports[i]` is trial i's report(epoch, value) -> prune. An exception raised by
    one trial (a bad parameter, its report refusing) ends that trial only; a
    KeyboardInterrupt or SystemExit ends them all.
    """
    outcomes: list[Outcome | None] = [None] * len(assignments)
    prepared: dict[int, PreparedTrial] = {}
    for i, assignment in enumerate(assignments):
        try:
            prepared[i] = prepare_trial(assignment, device=device, cache_dir=cache_dir)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as error:  # the trial's own outcome
            outcomes[i] = error
    stacks: dict[tuple, list[int]] = defaultdict(list)
    alone: list[int] = []
    for i, trial in prepared.items():
        if feature_cache is not None and fusable(trial):
            stacks[stack_key(trial)].append(i)
        else:
            alone.append(i)
    fits: dict[int, FitResult | BaseException] = {}
    for members in stacks.values():
        if len(members) == 1:
            alone += members
            continue
        fits.update(
            _fit_stack(
                {i: prepared[i] for i in members},
                {i: reports[i] for i in members},
                feature_cache,
            )
        )
    for i in sorted(alone):
        trial = prepared[i]
        torch.set_rng_state(trial.rng_state)  # as run_trial leaves it for dropout
        fits[i] = _guarded(
            lambda trial=trial, i=i: fine_tune(
                trial.model,
                trial.data,
                trial.cfg,
                reports[i],
                feature_cache=feature_cache,
                cache_key=trial.cache_key,
            )
        )
    for i, fit in fits.items():
        if isinstance(fit, BaseException):
            outcomes[i] = fit
            continue
        outcomes[i] = _guarded(
            lambda i=i, fit=fit: finish_trial(prepared[i], fit, artifact_dir=artifact_dir)
        )
    return outcomes  # type: ignore[return-value] - every slot is filled


def _guarded(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as error:  # the trial's own outcome
        return error


@dataclass
class _Member:
    """One trial in a stack: its weights, optimizer, schedule, generators and history."""

    trial: PreparedTrial
    report: Report
    weights: list[nn.Parameter]
    dropouts: list[float]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    shuffle: torch.Generator
    masks: torch.Generator
    criterion: nn.CrossEntropyLoss
    order: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    history: list[float] = field(default_factory=list)
    best: tuple[float, int, dict[str, torch.Tensor] | None] = (-1.0, 0, None)


def _head_layers(head: nn.Module) -> tuple[list[nn.Linear], list[float], type[nn.Module] | None]:
    """The head's linear layers, the dropout before each, and its activation."""
    linears: list[nn.Linear] = []
    dropouts: list[float] = []
    activation: type[nn.Module] | None = None
    pending = 0.0
    for module in head:
        if isinstance(module, nn.Dropout):
            pending = module.p
        elif isinstance(module, nn.Linear):
            linears.append(module)
            dropouts.append(pending)
            pending = 0.0
        else:
            activation = type(module)
    return linears, dropouts, activation


def _member(trial: PreparedTrial, report: Report, device: torch.device) -> _Member:
    cfg = trial.cfg
    # The global generator as a lone trial's dropout would find it: right after the
    # head was initialised from the trial's seed (prepare_trial).
    masks = torch.Generator(device=device)
    if device.type == "cpu":
        masks.set_state(trial.rng_state)
    else:
        masks.manual_seed(cfg.seed + 2)
    linears, dropouts, _ = _head_layers(trial.model.head)
    weights = [w for layer in linears for w in (layer.weight, layer.bias)]
    optimizer = make_optimizer(weights, cfg)
    steps_per_epoch = math.ceil(len(trial.data.train) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "cosine":
        anneal = lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))  # noqa: E731
    else:
        anneal = lambda step: 1.0  # noqa: E731
    return _Member(
        trial=trial,
        report=report,
        weights=weights,
        dropouts=dropouts,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, anneal),
        shuffle=torch.Generator().manual_seed(cfg.seed),
        masks=masks,
        criterion=nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
    )


def _stacked_forward(
    members: list[_Member], x: torch.Tensor, activation: type[nn.Module] | None, train: bool
) -> torch.Tensor:
    """(K, B, features) -> (K, B, classes): every layer one batched matmul for the stack."""
    act = activation() if activation is not None else None
    layers = len(members[0].dropouts)
    for layer in range(layers):
        if train:
            scales = []
            for k, member in enumerate(members):
                p = member.dropouts[layer]
                if p > 0:
                    # What nn.Dropout does on the CPU, from this trial's generator.
                    noise = torch.empty_like(x[k]).bernoulli_(1 - p, generator=member.masks)
                    scales.append(noise.div_(1 - p))
                else:
                    scales.append(torch.ones_like(x[k]))
            x = x * torch.stack(scales)
        weight = torch.stack([m.weights[2 * layer] for m in members])
        bias = torch.stack([m.weights[2 * layer + 1] for m in members])
        x = torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
        if layer < layers - 1 and act is not None:
            x = act(x)
    return x


def _fit_stack(
    trials: dict[int, PreparedTrial], reports: dict[int, Report], cache: FeatureCache
) -> dict[int, FitResult | BaseException]:
    """Train the heads of a stack together; each trial's fit or the exception that ended it."""
    started = time.perf_counter()
    first = next(iter(trials.values()))
    cfg = first.cfg
    device = torch.device(cfg.device)
    for trial in trials.values():
        trial.model.to(device)
    features = cached_features(first.model, first.data, cfg, cache, first.cache_key)
    if features is None:  # too large for the cache: each trains alone
        return {
            i: _guarded(
                lambda t=t, i=i: fine_tune(
                    t.model, t.data, t.cfg, reports[i], feature_cache=cache, cache_key=t.cache_key
                )
            )
            for i, t in trials.items()
        }
    train_x, val_x, cache_state = features
    train_y = first.data.train.y.to(device)
    val_y = first.data.val.y
    dtype = autocast_dtype(device) if cfg.mixed_precision else None
    precision = str(dtype).removeprefix("torch.") if dtype else "float32"
    _, _, activation = _head_layers(first.model.head)
    members = {i: _member(t, reports[i], device) for i, t in trials.items()}
    ended: dict[int, FitResult | BaseException] = {}
    n = len(train_y)

    for epoch in range(1, cfg.epochs + 1):
        active = [i for i in members if i not in ended]
        if not active:
            break
        stack = [members[i] for i in active]
        for member in stack:
            member.trial.model.train()
            member.order = torch.randperm(n, generator=member.shuffle)
        for start in range(0, n, cfg.batch_size):
            if n - start < 2 and n > 1:
                continue  # a batch of one is skipped, as alone
            idx = [m.order[start : start + cfg.batch_size] for m in stack]
            xb = torch.stack([take(train_x, i, device) for i in idx])
            with autocast(device, cfg.mixed_precision):
                logits = _stacked_forward(stack, xb, activation, train=True)
            loss = sum(
                m.criterion(logits[k].float(), train_y[idx[k].to(train_y.device)])
                for k, m in enumerate(stack)
            )
            for member in stack:
                member.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for member in stack:
                member.optimizer.step()
                member.scheduler.step()

        with torch.no_grad():
            outputs = []
            for start in range(0, len(val_x), EVAL_BATCH):
                xb = val_x[start : start + EVAL_BATCH]
                xb = xb.unsqueeze(0).expand(len(stack), *xb.shape)
                with autocast(device, cfg.mixed_precision):
                    outputs.append(_stacked_forward(stack, xb, activation, train=False).float())
            val_logits = torch.cat(outputs, dim=1).cpu()
        for k, i in enumerate(active):
            member = members[i]
            val_acc = (val_logits[k].argmax(1) == val_y).float().mean().item()
            member.history.append(val_acc)
            if val_acc > member.best[0]:
                head = member.trial.model.head.state_dict()
                member.best = (val_acc, epoch, {k: v.detach().clone() for k, v in head.items()})
            try:
                if member.report(epoch, val_acc):
                    raise TrialPruned(epoch, val_acc)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as error:  # this trial leaves the stack
                ended[i] = error

    train_s = time.perf_counter() - started
    for i, member in members.items():
        if i in ended:
            continue
        best_acc, best_epoch, best_state = member.best
        model = member.trial.model
        if best_state is not None:
            model.head.load_state_dict(best_state)
        model.eval()
        ended[i] = FitResult(
            epochs_ran=len(member.history),
            best_epoch=best_epoch,
            best_val_accuracy=best_acc,
            val_history=member.history,
            feature_cache=cache_state,
            precision=precision,
            train_s=train_s,
        )
    return ended
