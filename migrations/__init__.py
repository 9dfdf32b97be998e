"""Alembic migrations for TuneFleet's own tables (version table tunefleet_alembic_version)."""

from pathlib import Path

SCRIPT_LOCATION = Path(__file__).resolve().parent
VERSION_TABLE = "tunefleet_alembic_version"
TABLE_PREFIX = "tf_"


def include_name(name, type_, parent_names) -> bool:
    """Never let autogenerate see (and propose to drop) Optuna's tables."""
    if type_ == "table":
        return bool(name) and name.startswith(TABLE_PREFIX)
    return True
