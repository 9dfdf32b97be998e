"""The trial engine: fine-tune a transferred model and score it (see docs/CONTRACT.md)."""

from workers.transfer.errors import (
    DatasetError,
    ParamError,
    SourceModelError,
    TransferError,
    TrialPruned,
    UnsafeWeightsError,
)
from workers.transfer.trial import DEFAULT_PARAMS, TrialResult, resolve_params, run_trial

__all__ = [
    "DEFAULT_PARAMS",
    "DatasetError",
    "ParamError",
    "SourceModelError",
    "TransferError",
    "TrialPruned",
    "TrialResult",
    "UnsafeWeightsError",
    "resolve_params",
    "run_trial",
]
