"""Settings of a worker process, read from TUNEFLEET_* environment variables."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tunefleet.roots import parse_roots

DEFAULT_OBJECTIVE = "workers.transfer:run_trial"


def default_device() -> str:
    """cuda when a GPU is visible, else cpu; checked without importing torch when possible."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return "cpu"
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def device_problem(device: str) -> str | None:
    """Why a worker could not run on this device (None: it can), checked before any lease."""
    if device == "cpu":
        return None
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        return f"{device!r} is not a device: use cpu, cuda, cuda:N (or auto)"
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            return f"{device!r} but no CUDA GPU is visible here: use --device cpu (or auto)"
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            return f"{device!r} but this machine has {count} GPU(s): cuda:0..cuda:{count - 1}"
        return None
    if parsed.type == "mps":
        if not torch.backends.mps.is_available():
            return f"{device!r} but MPS is not available here: use --device cpu"
        return None
    if parsed.type != "cpu":
        return f"{device!r}: the worker runs on cpu, cuda or cuda:N"
    return None


def default_worker_id(device: str) -> str:
    """hostname-pid-device: unique per process, readable in the trial list."""
    return f"{socket.gethostname()}-{os.getpid()}-{device}".replace(" ", "_")


class WorkerSettings(BaseSettings):
    """Everything a worker needs; each is TUNEFLEET_<NAME> in the environment."""

    model_config = SettingsConfigDict(env_prefix="TUNEFLEET_", extra="ignore")

    service_url: str = Field(
        default="http://127.0.0.1:8000",
        description="Base URL of the TuneFleet API; several API processes behind one "
        "database comma-separated (the worker fails over between them).",
    )
    token: str = Field(default="", description="Bearer token with the worker scope.")
    token_file: Path | None = Field(
        default=None, description="A file holding the token (read when token is empty)."
    )
    device: str = Field(default="auto", description="cpu, cuda, cuda:N, or auto.")
    worker_id: str | None = Field(default=None, description="Default: hostname-pid-device.")
    cache_dir: Path = Field(
        default_factory=lambda: Path.home() / ".tunefleet" / "cache",
        description="Source models, datasets and frozen-backbone features.",
    )
    artifact_dir: Path = Field(
        default_factory=lambda: Path.home() / ".tunefleet" / "artifacts",
        description="Where trial checkpoints are written.",
    )
    data_roots: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Directories that `imagefolder:` datasets may lie under (comma-separated; "
        "`{owner}` stands for the study's owner); the same as the API's.",
    )
    model_roots: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Directories that `file:` models and `source_weights` may lie under.",
    )
    dataset_max_files: int = Field(
        default=200_000, ge=1, description="Most directory entries walked for one dataset."
    )
    dataset_max_images: int = Field(
        default=100_000, ge=1, description="Most images loaded for one dataset."
    )
    max_trials: int | None = Field(
        default=None, ge=1, description="Exit after this many trials (default: never)."
    )
    idle_exit_s: float | None = Field(
        default=None, gt=0, description="Exit after this long without work (default: never)."
    )
    poll_interval_max_s: float = Field(
        default=10.0, gt=0, description="Longest wait between two lease requests when idle."
    )
    backoff_base_s: float = Field(default=0.5, gt=0, description="First retry delay.")
    failure_backoff_after: int = Field(
        default=3,
        ge=1,
        description="Trials in a row failing with the same error before the worker waits.",
    )
    failure_backoff_base_s: float = Field(
        default=2.0, gt=0, description="First wait after repeated same-error failures."
    )
    failure_backoff_max_s: float = Field(
        default=300.0, gt=0, description="Cap of the wait after repeated failures."
    )
    backoff_max_s: float = Field(default=30.0, gt=0, description="Cap of the retry delay.")
    request_timeout_s: float = Field(default=30.0, gt=0, description="One HTTP request.")
    pack: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Trials leased at once (one study); head-only ones of the same head shape "
        "train fused on the cached features.",
    )
    slots: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Trials run at once on the device, each in a worker process of its own "
        "(for trials that cannot fuse: unfrozen blocks, augmentation).",
    )
    objective: str = Field(
        default=DEFAULT_OBJECTIVE,
        description="module:function run for each trial, with run_trial's signature. "
        "Only tests change it.",
    )

    @field_validator("data_roots", "model_roots", mode="before")
    @classmethod
    def _roots(cls, value: object) -> list[str]:
        return parse_roots(value)

    @field_validator("service_url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        urls = [u.strip().rstrip("/") for u in url.split(",") if u.strip()]
        if not urls:
            raise ValueError("give at least one URL, e.g. http://127.0.0.1:8000")
        for one in urls:
            if not one.startswith(("http://", "https://")):
                raise ValueError(f"must start with http:// or https://, got {one!r}")
        return ",".join(urls)

    def resolved_device(self) -> str:
        return default_device() if self.device == "auto" else self.device

    def resolved_worker_id(self) -> str:
        return self.worker_id or default_worker_id(self.resolved_device())
