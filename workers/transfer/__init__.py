"""The trial engine: fine-tune a transferred model and score it (see docs/CONTRACT.md)."""

from workers.transfer.errors import (
    DatasetError,
    ParamError,
    SourceModelError,
    TransferError,
    TrialPruned,
    UnsafeWeightsError,
)
from workers.transfer.trial import TrialResult, run_trial

__all__ = [
    "DatasetError",
    "ParamError",
    "SourceModelError",
    "TransferError",
    "TrialPruned",
    "TrialResult",
    "UnsafeWeightsError",
    "run_trial",
]
