"""Errors a trial can raise; each message says what the user should change."""

from __future__ import annotations


class TransferError(Exception):
    """Base class of the errors caused by a study's spec, files or data."""


class SourceModelError(TransferError):
    """The source model cannot be loaded or does not fit the engine."""


class UnsafeWeightsError(SourceModelError):
    """A weights file would need full unpickling (arbitrary code) to load."""


class DatasetError(TransferError):
    """The dataset is missing, empty, or inconsistent."""


class ParamError(TransferError):
    """A hyperparameter or spec value the engine cannot use."""


class TrialPruned(Exception):
    """The pruner stopped the trial after `epoch` epochs."""

    def __init__(self, epoch: int, value: float | None = None) -> None:
        super().__init__(f"trial pruned after epoch {epoch} (validation accuracy {value})")
        self.epoch = epoch
        self.value = value
