"""Errors a trial can raise; each message says what the user should change.

An error has two messages. ``public`` names only what the user wrote in the
spec (the dataset URI, the weights path) and is what the study's owner sees as
the trial's fail reason, after a short ``code``. ``str(error)`` is the full
detail, with the paths and names the worker found: it goes to the worker's log
and to the trial's admin-only detail, never to the owner.
"""

from __future__ import annotations


class TransferError(Exception):
    """Base class of the errors caused by a study's spec, files or data."""

    code = "trial_error"

    def __init__(self, detail: str, *, public: str | None = None, code: str | None = None):
        super().__init__(detail)
        self.public = public if public is not None else detail
        if code is not None:
            self.code = code


class SourceModelError(TransferError):
    """The source model cannot be loaded or does not fit the engine."""

    code = "source_model"


class UnsafeWeightsError(SourceModelError):
    """A weights file would need full unpickling (arbitrary code) to load."""

    code = "unsafe_weights"


class DatasetError(TransferError):
    """The dataset is missing, empty, or inconsistent."""

    code = "dataset"


class ParamError(TransferError):
    """A hyperparameter or spec value the engine cannot use."""

    code = "params"


class TrialPruned(Exception):
    """The pruner stopped the trial after `epoch` epochs."""

    def __init__(self, epoch: int, value: float | None = None) -> None:
        super().__init__(f"trial pruned after epoch {epoch} (validation accuracy {value})")
        self.epoch = epoch
        self.value = value
