"""One trial end to end: load, transfer, fine-tune, score, save the artifact."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from tunefleet.protocol import DATASET_FINGERPRINT_ATTR, Assignment
from tunefleet.spec import Compression, SpecError, StudySpec
from workers.transfer.access import FileAccess
from workers.transfer.compress import compress, count_params, latency_ms, size_mb
from workers.transfer.data import Dataset, load_dataset, to_float
from workers.transfer.errors import ParamError
from workers.transfer.features import FEATURES, FeatureCache
from workers.transfer.models import InputAdapter, TransferModel, build_head
from workers.transfer.robustness import robust_accuracy
from workers.transfer.sources import SourceModel, load_source_model
from workers.transfer.train import FitResult, Report, TrainConfig, accuracy, fine_tune
from workers.transfer.weights import save_weights


@dataclass
class TrialResult:
    values: dict[str, float]  # one per objective metric of the spec
    attrs: dict[str, Any] = field(default_factory=dict)  # JSON: components, timings, ...
    artifact: str | None = None  # path of the fine-tuned model (safetensors)


def _trial_params(spec: StudySpec, params: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return spec.trial_params(params)
    except SpecError as error:
        raise ParamError(str(error)) from None


def build_model(source: SourceModel, data: Dataset, params: dict[str, Any]) -> TransferModel:
    """Backbone copy, new head with the sampled shape, freezing per unfreeze_blocks."""
    stages, post = source.backbone()
    head = build_head(
        source.feature_dim,
        data.num_classes,
        depth=params["head_depth"],
        width=params["head_width"],
        dropout=params["dropout"],
        activation=params["activation"],
    )
    return TransferModel(
        InputAdapter(source.input_spec),
        stages,
        post,
        head,
        unfreeze_blocks=params["unfreeze_blocks"],
        blocks=source.blocks,
    )


@dataclass
class PreparedTrial:
    """A trial ready to train: its parameters, config, source, data and model."""

    assignment: Assignment
    params: dict[str, Any]
    cfg: TrainConfig
    source: SourceModel
    data: Dataset
    model: TransferModel
    started: float
    loaded: float
    # The global generator right after the head was initialised: where dropout starts.
    rng_state: torch.Tensor

    @property
    def cache_key(self) -> tuple:
        """Backbone and weights, dataset, preprocessing; train.py adds split and frozen depth."""
        return (self.source.content_hash, self.data.fingerprint, self.source.input_spec)


def prepare_trial(
    assignment: Assignment | Mapping[str, Any],
    *,
    device: str = "cpu",
    cache_dir: Path,
    access: FileAccess | None = None,
) -> PreparedTrial:
    """Validate the assignment, load its source model and dataset, build its model
    (head initialised from the trial's seed). `access` holds the data and model roots
    and the dataset limits; by default this process's TUNEFLEET_* settings."""
    started = time.perf_counter()
    assignment = _validated(assignment)
    spec, number = assignment.spec, assignment.number
    params = _trial_params(spec, assignment.params)
    cfg = TrainConfig(
        lr=params["lr"],
        optimizer=params["optimizer"],
        weight_decay=params["weight_decay"],
        batch_size=params["batch_size"],
        epochs=spec.budget.epochs,
        l2sp_alpha=params["l2sp_alpha"],
        label_smoothing=params["label_smoothing"],
        augment_strength=params["augment_strength"],
        seed=spec.seed + number,
        device=str(device),
    )
    cfg.validate()

    try:
        source_uri, source_weights = spec.source_of(assignment.params)
    except SpecError as error:
        raise ParamError(str(error)) from None
    access = access or FileAccess.from_env(owner=getattr(assignment, "owner", None))
    source = load_source_model(
        source_uri, weights=source_weights, cache_dir=Path(cache_dir), access=access
    )
    data = load_dataset(spec.dataset, source.input_spec, access=access)
    loaded = time.perf_counter()

    torch.manual_seed(cfg.seed)  # head initialisation and dropout
    model = build_model(source, data, params)
    rng_state = torch.get_rng_state()
    return PreparedTrial(assignment, params, cfg, source, data, model, started, loaded, rng_state)


def run_trial(
    assignment: Assignment | Mapping[str, Any],
    report: Report,
    *,
    device: str = "cpu",
    cache_dir: Path,
    artifact_dir: Path,
    feature_cache: FeatureCache | None = FEATURES,
    access: FileAccess | None = None,
) -> TrialResult:
    """Fine-tune and score one trial of the assignment's study.

    `assignment` is the leased Assignment, or its JSON (validated here, spec included).
    Calls `report(epoch, val_accuracy)` after each epoch (epochs count from 1) and
    raises TrialPruned when it returns True; raises a
    TransferError subclass (with what to fix) for a bad spec, file or dataset.
    Pass feature_cache=None to recompute frozen features in every batch; `access`
    as in prepare_trial.
    """
    trial = prepare_trial(assignment, device=device, cache_dir=cache_dir, access=access)
    fit = fine_tune(
        trial.model,
        trial.data,
        trial.cfg,
        report,
        feature_cache=feature_cache,
        cache_key=trial.cache_key,
    )
    return finish_trial(trial, fit, artifact_dir=artifact_dir)


def finish_trial(trial: PreparedTrial, fit: FitResult, *, artifact_dir: Path) -> TrialResult:
    """Score a trained trial (its model holds the best epoch) and save its artifact."""
    assignment, params, cfg = trial.assignment, trial.params, trial.cfg
    source, data, model = trial.source, trial.data, trial.model
    spec, number, device = assignment.spec, assignment.number, cfg.device
    metrics = spec.metric_names
    started, loaded = trial.started, trial.loaded
    _, source_weights = spec.source_of(assignment.params)  # validated in prepare_trial

    scored = time.perf_counter()
    values: dict[str, float] = {}
    attrs: dict[str, Any] = {}
    values["accuracy"] = accuracy(model, data.test, cfg.device)
    if not spec.robustness.is_empty():
        # Scored whenever the suite has a perturbation; an attribute when not an objective.
        mean, components = robust_accuracy(
            model, data.test, spec.robustness, device=cfg.device, seed=cfg.seed
        )
        values["robustness"] = mean
        attrs.update({f"robustness/{name}": acc for name, acc in components.items()})
    attrs.update(_cost_metrics(model, data, spec.compression, cfg.device, "latency_ms" in metrics))
    values.update({k: attrs.pop(k) for k in ("params", "size_mb", "latency_ms") if k in attrs})
    finished = time.perf_counter()

    attrs.update(_fit_attrs(fit, source, data, model))
    attrs.update(
        {
            "time/load_s": loaded - started,
            "time/train_s": fit.train_s,
            "time/score_s": finished - scored,
            "time/total_s": finished - started,
            "device": str(device),
        }
    )
    artifact = save_artifact(
        model,
        Path(artifact_dir) / str(assignment.study_id) / str(number),
        config={
            "source_model": source.uri,
            "source_arch": source.arch,
            "source_hash": source.content_hash,
            "source_weights": source_weights,
            "dataset": data.uri,
            "classes": list(data.classes),
            "input": asdict(source.input_spec),
            "params": params,
            "train": asdict(cfg),
            "trial_id": assignment.trial_id,
            "study_id": assignment.study_id,
            "number": number,
        },
        scores={**values, **{k: v for k, v in attrs.items() if k.startswith("robustness/")}},
    )
    for name in ("accuracy", "robustness", "params", "size_mb", "latency_ms"):
        if name in values and name not in metrics:
            attrs[name] = values.pop(name)  # computed anyway; shown, not optimised
    return TrialResult(
        values={m: float(values[m]) for m in metrics}, attrs=attrs, artifact=artifact
    )


def _validated(assignment: Assignment | Mapping[str, Any]) -> Assignment:
    if isinstance(assignment, Assignment):
        return assignment  # the worker loop validated it when the lease came in
    try:
        return Assignment.model_validate(assignment)
    except ValidationError as error:
        raise ParamError(str(SpecError.from_validation_error(error))) from None


def _cost_metrics(
    model: TransferModel, data: Dataset, compression: Compression, device: str, timed: bool
) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)
    }
    example = to_float(data.test.x[:1])
    measured = model
    latency_device = device
    if compression.active:
        measured = compress(model, compression)
        latency_device = "cpu"  # int8 dynamic kernels run on the CPU
        attrs["compression/accuracy"] = accuracy(measured, data.test, "cpu")
        attrs["compression/quantize_int8"] = compression.quantize_int8
        attrs["compression/prune_amount"] = compression.prune_amount
        attrs["params_uncompressed"] = count_params(model)
        attrs["size_mb_uncompressed"] = size_mb(model)
    attrs["params"] = count_params(measured)
    attrs["size_mb"] = size_mb(measured)
    if timed:
        attrs["latency_ms"] = latency_ms(measured, example, latency_device)
        attrs["latency_device"] = latency_device
    return attrs


def _fit_attrs(fit: FitResult, source: SourceModel, data: Dataset, model: TransferModel) -> dict:
    return {
        "val_accuracy": fit.best_val_accuracy,
        "val_history": fit.val_history,
        "best_epoch": fit.best_epoch,
        "epochs_ran": fit.epochs_ran,
        "feature_cache": fit.feature_cache,
        "precision": fit.precision,
        "source_hash": source.content_hash,
        "source_model": source.uri,
        "backbone_stages": source.num_blocks,
        "unfrozen_stages": model.unfrozen_stages,
        "num_classes": data.num_classes,
        "train_size": len(data.train),
        DATASET_FINGERPRINT_ATTR: data.content_hash,
    }


def save_artifact(model: TransferModel, directory: Path, *, config: dict, scores: dict) -> str:
    """model.safetensors (config and scores in its metadata) and config.json beside it."""
    path = directory / "model.safetensors"
    save_weights(
        path,
        model.state_dict(),
        {"arch": "tunefleet:transfer", "config": config, "scores": scores},
    )
    body = json.dumps({"config": config, "scores": scores}, indent=2, default=_json_default)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".config.json.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(body + "\n")
    os.replace(tmp, directory / "config.json")
    return str(path)


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)
