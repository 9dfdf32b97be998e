"""The service's modules stay small, and their `__all__` says what others use."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = sorted(ROOT.joinpath("service").rglob("*.py"))
MAX_LINES = 450


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_no_service_module_is_over_450_lines(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{module_name(path)} has {lines} lines: look for its second job"


def imports_from_service() -> dict[str, set[str]]:
    """Public names imported from each service module anywhere in the repository."""
    names: dict[str, set[str]] = {}
    for folder in ("service", "tests", "bench", "tunefleet", "workers", "scripts"):
        for path in ROOT.joinpath(folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("service."):
                    names.setdefault(node.module, set()).update(
                        a.name for a in node.names if not a.name.startswith("_")
                    )
    return names


def test_every_all_names_what_the_module_has_and_what_others_import() -> None:
    imported = imports_from_service()
    problems = []
    for path in MODULES:
        name = module_name(path)
        module = importlib.import_module(name)
        exported = getattr(module, "__all__", None)
        if exported is None:
            continue
        problems += [f"{name}.__all__ names {n}, which it lacks" for n in exported
                     if not hasattr(module, n)]  # fmt: skip
        problems += [f"{name}.__all__ lacks {n}, which others import" for n in
                     sorted(imported.get(name, set()) - set(exported))]  # fmt: skip
    assert not problems, "\n".join(problems)
