"""What files a trial may read on this worker, and how much of a dataset it may load."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunefleet.roots import PathNotAllowed, is_under_roots, resolve_under_roots
from workers.transfer.errors import DatasetError, SourceModelError

__all__ = ["FileAccess"]


@dataclass(frozen=True)
class FileAccess:
    """The worker's data and model roots, the study's owner, and the dataset limits."""

    data_roots: tuple[str, ...] = ()
    model_roots: tuple[str, ...] = ()
    owner: str | None = None
    max_files: int = 200_000
    max_images: int = 100_000

    @classmethod
    def from_env(cls, *, owner: str | None = None) -> FileAccess:
        """The TUNEFLEET_* settings of this worker process."""
        from workers.config import WorkerSettings

        settings = WorkerSettings()
        return cls(
            data_roots=tuple(settings.data_roots),
            model_roots=tuple(settings.model_roots),
            owner=owner,
            max_files=settings.dataset_max_files,
            max_images=settings.dataset_max_images,
        )

    def dataset_path(self, written: str, uri: str) -> Path:
        """The resolved folder of ``imagefolder:<written>``, checked against the data roots."""
        try:
            return resolve_under_roots(
                written,
                self.data_roots,
                owner=self.owner,
                field="dataset",
                setting="TUNEFLEET_DATA_ROOTS",
                prefer_existing=True,
            )
        except PathNotAllowed as error:
            raise DatasetError(
                f"{error} (data roots {list(self.data_roots)})",
                public=str(error),
                code="path_not_allowed",
            ) from None

    def inside_data_roots(self, path: Path) -> bool:
        return is_under_roots(path, self.data_roots, owner=self.owner)

    def model_path(self, written: str, field_name: str) -> Path:
        """The resolved weights file, checked against the model roots."""
        try:
            return resolve_under_roots(
                written,
                self.model_roots,
                owner=self.owner,
                field=field_name,
                setting="TUNEFLEET_MODEL_ROOTS",
                prefer_existing=True,
            )
        except PathNotAllowed as error:
            raise SourceModelError(
                f"{error} (model roots {list(self.model_roots)})",
                public=str(error),
                code="path_not_allowed",
            ) from None
