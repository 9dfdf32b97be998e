"""The engine reads the validated spec: what the spec accepts runs, with the spec's defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunefleet.protocol import Assignment
from tunefleet.spec import CORRUPTIONS, KNOWN_PARAMS, PGD
from workers.transfer import ParamError, run_trial
from workers.transfer.models import ACTIVATIONS
from workers.transfer.robustness import IMPLEMENTED

# A suite of one perturbation at a time, so that each trial scores only it.
NOTHING_ELSE = {"gaussian_sigma": [], "fgsm_eps": []}


def test_the_engine_implements_exactly_the_corruptions_the_spec_accepts() -> None:
    assert set(IMPLEMENTED) == set(CORRUPTIONS)


def test_the_engine_builds_exactly_the_activations_the_spec_accepts() -> None:
    assert set(ACTIVATIONS) == set(KNOWN_PARAMS["activation"].choices or ())


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_every_corruption_of_the_spec_runs_in_the_engine(
    corruption: str, cache_dir: Path, artifact_dir: Path, make_assignment, reports
) -> None:
    _, report = reports
    result = run_trial(
        make_assignment(
            objectives=[{"metric": "robustness"}],
            robustness={**NOTHING_ELSE, "corruptions": [corruption]},
            budget={"epochs": 1},
        ),
        report,
        cache_dir=cache_dir,
        artifact_dir=artifact_dir,
    )
    components = {k: v for k, v in result.attrs.items() if k.startswith("robustness/")}
    assert list(components) == [f"robustness/{corruption}"]
    assert result.values == {"robustness": components[f"robustness/{corruption}"]}
    assert 0.0 <= result.values["robustness"] <= 1.0


def test_pgd_without_options_attacks_with_the_spec_defaults(
    cache_dir: Path, artifact_dir: Path, make_assignment, reports
) -> None:
    _, report = reports
    result = run_trial(
        make_assignment(robustness={**NOTHING_ELSE, "pgd": {}}, budget={"epochs": 1}),
        report,
        cache_dir=cache_dir,
        artifact_dir=artifact_dir,
    )
    default_eps = PGD().eps
    assert f"robustness/pgd_{default_eps:g}" in result.attrs
    assert result.attrs["robustness"] <= result.values["accuracy"]  # an attribute, not a value


def test_a_spec_the_service_would_refuse_is_refused_with_its_field_path(
    cache_dir: Path, artifact_dir: Path, make_assignment, reports
) -> None:
    _, report = reports
    bad = [
        ({"compression": {"prune_amount": 0.99}}, r"spec\.compression\.prune_amount"),
        ({"robustness": {"corruptions": ["fog"]}}, r"spec\.robustness\.corruptions\.0"),
        ({"robustness": {"pgd": {"eps": 0}}}, r"spec\.robustness\.pgd\.eps"),
        ({"budget": {"epochs": 0}}, r"spec\.budget\.epochs"),
    ]
    for spec, path in bad:
        with pytest.raises(ParamError, match=path):
            run_trial(
                make_assignment(**spec), report, cache_dir=cache_dir, artifact_dir=artifact_dir
            )
    assert not artifact_dir.exists()


def test_a_validated_assignment_is_used_as_it_is(
    cache_dir: Path, artifact_dir: Path, make_assignment, reports
) -> None:
    _, report = reports
    assignment = Assignment.model_validate(
        make_assignment({"head_width": 16}, budget={"epochs": 1}, robustness=NOTHING_ELSE)
    )
    result = run_trial(assignment, report, cache_dir=cache_dir, artifact_dir=artifact_dir)
    assert set(result.values) == {"accuracy"}
    assert result.attrs["epochs_ran"] == 1
    assert Path(result.artifact).parts[-3:-1] == ("7", str(assignment.number))
