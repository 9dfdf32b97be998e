"""Settings of the API process, read from TUNEFLEET_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tunefleet.roots import parse_roots

ENV_PREFIX = "TUNEFLEET_"
DEFAULT_TOKEN_SECRET = "tunefleet-development-secret"
MIN_TOKEN_SECRET_CHARS = 32


def default_data_dir() -> Path:
    return Path.home() / ".tunefleet"


class Settings(BaseSettings):
    """Every setting of the API process; each is TUNEFLEET_<NAME> in the environment."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Where the embedded defaults live (SQLite file, artifacts).",
    )
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL of the database: postgresql://... for a fleet, "
        "sqlite:///file.db for the single-process demo. Empty means SQLite in data_dir.",
    )
    host: str = Field(default="127.0.0.1", description="Address the API binds to.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port the API binds to.")
    token_secret: str = Field(
        default=DEFAULT_TOKEN_SECRET,
        min_length=8,
        description="Secret mixed into token hashes; set a long random value in production.",
    )
    heartbeat_interval_s: float = Field(
        default=10.0, gt=0, description="How often workers are told to heartbeat."
    )
    grace_period_s: float = Field(
        default=60.0, gt=0, description="A lease without heartbeat for this long is reaped."
    )
    reaper_interval_s: float = Field(
        default=5.0, gt=0, description="How often the API looks for stale leases."
    )
    artifact_dir: Path | None = Field(
        default=None, description="Where trial checkpoints are kept; default data_dir/artifacts."
    )
    max_body_bytes: int = Field(
        default=1_000_000, ge=1024, description="Largest request body accepted, in bytes."
    )
    max_user_priority: int = Field(
        default=10,
        ge=0,
        le=100,
        description="Highest study priority a user token may set; above it needs an admin token.",
    )
    max_running_studies_per_owner: int = Field(
        default=100, ge=1, description="Running studies one owner may have; more is a 429."
    )
    max_running_trials_per_owner: int = Field(
        default=256,
        ge=1,
        description="Trials of one owner running at once; beyond it their studies wait their turn.",
    )
    max_waiting_trials_per_owner: int = Field(
        default=1000,
        ge=1,
        description="Enqueued (WAITING) trials one owner may have; more is a 429.",
    )
    private_owners: list[str] = Field(
        default_factory=list,
        description="Owners with a private fleet: their studies go only to worker tokens "
        "bound to them (`token create --studies-of OWNER`), never to the shared fleet.",
    )
    max_attrs_depth: int = Field(
        default=8, ge=1, le=64, description="Deepest nesting of a trial's attrs; deeper is a 422."
    )
    max_attrs_bytes: int = Field(
        default=64 * 1024, ge=1024, description="Largest attrs of one call, as JSON; more is a 413."
    )
    data_roots: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Directories that `imagefolder:` datasets may lie under, comma-separated; "
        "a part `{owner}` stands for the study's owner. Empty: no dataset files at all.",
    )
    model_roots: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Directories that `file:` models and `source_weights` may lie under, "
        "as data_roots.",
    )
    metrics_token: str = Field(
        default="",
        description="When set, /metrics answers only 'Authorization: Bearer <this value>'. "
        "Keep /metrics off the public network either way.",
    )
    max_cached_trials: int = Field(
        default=100_000,
        ge=0,
        description="Trials of the loaded studies an API process keeps for their samplers "
        "(about 3 KiB each); beyond it the least recently leased studies are dropped and "
        "read again when next leased. The study in use stays whatever its size.",
    )
    db_pool_size: int = Field(default=10, ge=1, description="Connections kept per API process.")
    db_max_overflow: int = Field(default=20, ge=0, description="Extra connections under load.")

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, url: str) -> str:
        if url and not url.startswith(("postgresql", "sqlite")):
            raise ValueError(
                "must be a postgresql://user@host:port/db or sqlite:///path URL, "
                f"not {url.split(':', 1)[0]!r}"
            )
        return url

    @field_validator("data_roots", "model_roots", mode="before")
    @classmethod
    def _roots(cls, value: object) -> list[str]:
        return parse_roots(value)

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'tunefleet.db'}"
        if self.artifact_dir is None:
            self.artifact_dir = self.data_dir / "artifacts"
        if self.grace_period_s <= self.heartbeat_interval_s:
            raise ValueError(
                "TUNEFLEET_GRACE_PERIOD_S must be larger than TUNEFLEET_HEARTBEAT_INTERVAL_S, "
                "or every lease would be reaped between two heartbeats"
            )
        return self

    def ensure_dirs(self) -> None:
        """Create the directories the embedded defaults write to."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        assert self.artifact_dir is not None
        self.artifact_dir.mkdir(parents=True, exist_ok=True)


class SettingsError(Exception):
    """A setting has a bad value; the message names the environment variable."""


def weak_token_secret(secret: str) -> bool:
    """The development default, or too short to resist guessing."""
    return secret == DEFAULT_TOKEN_SECRET or len(secret) < MIN_TOKEN_SECRET_CHARS


def require_strong_token_secret(settings: Settings) -> None:
    """SettingsError when a PostgreSQL deployment would hash its tokens with a weak secret.

    SQLite (the single-machine demo) may keep the development default.
    """
    if settings.database_url.startswith("postgresql") and weak_token_secret(settings.token_secret):
        raise SettingsError(
            f"{ENV_PREFIX}TOKEN_SECRET is the development default or shorter than "
            f"{MIN_TOKEN_SECRET_CHARS} characters, which cannot protect the tokens of a "
            "PostgreSQL deployment; make one with `openssl rand -hex 32`"
        )


def describe_validation_error(exc: ValidationError, prefix: str = ENV_PREFIX) -> str:
    """One line per bad setting, named as the user sets it: TUNEFLEET_NAME."""
    lines = []
    for err in exc.errors():
        loc = "_".join(str(part) for part in err["loc"]).upper()
        name = f"{prefix}{loc}" if loc else "settings"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{name}: {msg}")
    return "; ".join(lines)


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning a validation error into one readable message."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from None
