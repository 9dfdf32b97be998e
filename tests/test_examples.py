"""The example specs in examples/ are valid, and the CLI rejects bad ones before any call."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.test_cli import run_cli
from tunefleet.cli.demo import demo_spec
from tunefleet.spec import StudySpec

EXAMPLES = sorted((REPO_ROOT / "examples").glob("*.yaml"))


def test_there_are_examples():
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_spec_is_valid(path: Path):
    spec = StudySpec.from_text(path.read_text())
    assert spec.name == path.read_text().split("name:", 1)[1].split()[0]


def test_demo_spec_is_valid_and_has_both_objectives():
    spec = StudySpec.model_validate(demo_spec(name="demo", trials=3, epochs=2, seed=0))
    assert [o.metric for o in spec.objectives] == ["accuracy", "robustness"]
    assert {"lr", "activation", "head_depth"} <= set(spec.search_space)


def test_study_create_reports_the_field_path_of_a_bad_spec(tmp_path):
    bad = tmp_path / "bad.yaml"
    text = (REPO_ROOT / "examples" / "digits-transfer.yaml").read_text()
    bad.write_text(text.replace("low: 1.0e-4", "low: -1.0"))
    result = run_cli(
        "study", "create", "-f", str(bad), "--token", "t", "--service", "http://127.0.0.1:9"
    )
    assert result.returncode == 1
    assert "search_space.lr" in result.stderr
    assert "Traceback" not in result.stderr


def test_study_commands_without_token_say_how_to_get_one():
    result = run_cli("study", "list", "--service", "http://127.0.0.1:9")
    assert result.returncode == 1
    assert "tunefleet token create" in result.stderr
