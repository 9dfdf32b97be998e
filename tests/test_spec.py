"""The study spec: what is accepted, what is rejected, and where the error points."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from tunefleet.protocol import Assignment
from tunefleet.spec import (
    CORRUPTIONS,
    KNOWN_PARAMS,
    SpecError,
    StudySpec,
    field_path,
    grid_size,
    grid_values,
    validate_params,
)


def base_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "digits-transfer",
        "source_model": "builtin:digits-cnn",
        "dataset": "builtin:digits-5to9",
        "objectives": [{"metric": "accuracy", "direction": "maximize"}],
        "search_space": {
            "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            "activation": {"type": "categorical", "choices": ["relu", "gelu"]},
            "head_depth": {"type": "int", "low": 1, "high": 3},
        },
    }
    spec.update(overrides)
    return spec


def error_paths(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        StudySpec.model_validate(data)
    return {field_path(e["loc"]): e["msg"] for e in info.value.errors()}


def test_minimal_spec_gets_defaults() -> None:
    spec = StudySpec.model_validate(base_spec())
    assert spec.sampler.type == "tpe"
    assert spec.pruner is not None and spec.pruner.type == "hyperband"
    assert spec.budget.max_trials == 50
    assert spec.metric_names == ["accuracy"]
    assert spec.directions == ["maximize"]


def test_dumped_spec_validates_again_unchanged() -> None:
    spec = StudySpec.model_validate(base_spec(fixed_params={"dropout": 0, "batch_size": 32.0}))
    dumped = spec.model_dump(mode="json")
    assert dumped["fixed_params"] == {"dropout": 0.0, "batch_size": 32}
    assert StudySpec.model_validate(dumped).model_dump(mode="json") == dumped


def test_objective_direction_defaults_to_the_metric_natural_one() -> None:
    spec = StudySpec.model_validate(
        base_spec(objectives=[{"metric": "accuracy"}, {"metric": "latency_ms"}])
    )
    assert spec.directions == ["maximize", "minimize"]


def test_multi_objective_without_pruner_gets_none() -> None:
    spec = StudySpec.model_validate(
        base_spec(objectives=[{"metric": "accuracy"}, {"metric": "robustness"}])
    )
    assert spec.pruner is not None and spec.pruner.type == "none"


def space(**params: dict) -> dict[str, Any]:
    return {"search_space": params}


def fl(low: float, high: float, **extra: Any) -> dict[str, Any]:
    return {"type": "float", "low": low, "high": high, **extra}


def objectives(*metrics: str) -> dict[str, Any]:
    return {"objectives": [{"metric": m} for m in metrics]}


TWO = objectives("accuracy", "robustness")
INVALID = [
    (space(lr=fl(0.1, 0.01)), "search_space.lr.low"),
    (space(lr=fl(0, 1, log=True)), "search_space.lr.low"),
    (space(head_depth={"type": "int", "low": 3, "high": 3}), "search_space.head_depth.low"),
    (space(lr=fl(0.1, 1, step=0.1, log=True)), "search_space.lr.step"),
    (space(learning_rate=fl(0.1, 1)), "search_space.learning_rate"),
    (space(lr={"type": "gaussian", "low": 0.1, "high": 1}), "search_space.lr"),
    (space(lr=fl(0.1, 1, lg=True)), "search_space.lr.lg"),
    (space(head_depth=fl(1, 2)), "search_space.head_depth.type"),
    (space(activation={"type": "int", "low": 1, "high": 2}), "search_space.activation.type"),
    (
        space(activation={"type": "categorical", "choices": ["relu", "swish"]}),
        "search_space.activation.choices.1",
    ),
    (space(dropout=fl(0.0, 1.5)), "search_space.dropout.high"),
    (
        space(batch_size={"type": "categorical", "choices": [32, 32]}),
        "search_space.batch_size.choices",
    ),
    (space(), "search_space"),
    (objectives(), "objectives"),
    (objectives("f1"), "objectives.0.metric"),
    (objectives("accuracy", "accuracy"), "objectives.1.metric"),
    (objectives("accuracy", "robustness", "params", "size_mb"), "objectives"),
    ({"objectives": [{"metric": "accuracy", "direction": "up"}]}, "objectives.0.direction"),
    ({"source_model": "hf:bert-base"}, "source_model"),
    ({"source_model": "builtin:resnet"}, "source_model"),
    ({"source_model": "resnet18"}, "source_model"),
    ({"source_model": "torchvision:resnet18"}, "source_weights"),
    ({"source_model": "file:/models/b.onnx"}, "source_model"),
    ({"source_weights": "/w.safetensors"}, "source_weights"),
    ({"dataset": "s3://bucket/data"}, "dataset"),
    ({"dataset": "builtin:cifar10"}, "dataset"),
    ({"name": "Digits Transfer"}, "name"),
    ({"sampler": {"type": "bayes"}}, "sampler"),
    ({"sampler": {"type": "tpe", "seeed": 1}}, "sampler.seeed"),
    ({"sampler": {"type": "tpe", "group": True, "multivariate": False}}, "sampler.group"),
    ({"sampler": {"type": "grid"}}, "sampler.type"),
    ({"sampler": {"type": "cmaes"}, **TWO}, "sampler.type"),
    ({"sampler": {"type": "cmaes"}, **space(lr=fl(0.01, 0.1))}, "sampler.type"),
    (
        {"sampler": {"type": "cmaes", "with_margin": True, "use_separable_cma": True}},
        "sampler.with_margin",
    ),
    ({"sampler": {"type": "qmc", "qmc_type": "lhs"}}, "sampler.qmc_type"),
    ({"pruner": {"type": "asha"}}, "pruner"),
    ({"pruner": {"type": "median"}, **TWO}, "pruner.type"),
    ({"pruner": {"type": "hyperband", "min_resource": 20}}, "pruner.min_resource"),
    ({"pruner": {"type": "successive_halving", "min_resource": 0}}, "pruner.min_resource"),
    ({"fixed_params": {"momentum": 0.9}}, "fixed_params.momentum"),
    ({"fixed_params": {"lr": 0.01}}, "fixed_params.lr"),
    ({"fixed_params": {"optimizer": "lion"}}, "fixed_params.optimizer"),
    ({"fixed_params": {"batch_size": 12.5}}, "fixed_params.batch_size"),
    ({"budget": {"max_trials": 0}}, "budget.max_trials"),
    ({"budget": {"max_trial": 5}}, "budget.max_trial"),
    ({"priority": 101}, "priority"),
    (
        {**objectives("robustness"), "robustness": {"gaussian_sigma": [], "fgsm_eps": []}},
        "robustness",
    ),
    ({"robustness": {"corruptions": ["fog"]}}, "robustness.corruptions.0"),
    ({"compression": {"prune_amount": 1.0}}, "compression.prune_amount"),
    ({"compression": {"prune_amount": 0.96}}, "compression.prune_amount"),
    ({"robustness": {"pgd": {"eps": 0}}}, "robustness.pgd.eps"),
    ({"robustness": {"corruptions": ["blur", "pixelate", "blur"]}}, "robustness.corruptions.2"),
    ({"robustness": {"gaussian_sigma": [0.1, 0.1000001]}}, "robustness.gaussian_sigma.1"),
    ({"robustness": {"fgsm_eps": [0.03, 0.03]}}, "robustness.fgsm_eps.1"),
    ({"robustness": {"pgd": {"steps": 0}}}, "robustness.pgd.steps"),
    ({"budget": {"epochs": 0}}, "budget.epochs"),
    ({"colour": "blue"}, "colour"),
]


@pytest.mark.parametrize(("overrides", "path"), INVALID)
def test_invalid_spec_is_rejected_at_its_field(overrides: dict[str, Any], path: str) -> None:
    paths = error_paths(base_spec(**overrides))
    assert path in paths, paths


def test_unknown_param_error_lists_the_known_ones() -> None:
    paths = error_paths(
        base_spec(search_space={"momentum": {"type": "float", "low": 0, "high": 1}})
    )
    message = paths["search_space.momentum"]
    for name in KNOWN_PARAMS:
        assert name in message


def test_non_finite_numbers_are_rejected() -> None:
    paths = error_paths(
        base_spec(search_space={"lr": {"type": "float", "low": float("nan"), "high": 1.0}})
    )
    assert "search_space.lr.low" in paths


def test_every_problem_is_reported_at_once() -> None:
    paths = error_paths(
        base_spec(
            search_space={"lr": {"type": "float", "low": 1, "high": 0.1}},
            dataset="ftp:x",
            name="Bad",
        )
    )
    assert {"search_space.lr.low", "dataset", "name"} <= set(paths)
    paths = error_paths(
        base_spec(search_space={"momentum": fl(0, 1)}, fixed_params={"zzz": 1, "dropout": 2})
    )
    assert {"search_space.momentum", "fixed_params.zzz", "fixed_params.dropout"} <= set(paths)


def test_torchvision_model_with_weights_is_accepted() -> None:
    spec = StudySpec.model_validate(
        base_spec(source_model="torchvision:resnet18", source_weights="/w/resnet18.safetensors")
    )
    assert spec.source_weights == "/w/resnet18.safetensors"


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "random", "gp", "qmc"])
def test_samplers_accept_multi_objective(sampler: str) -> None:
    StudySpec.model_validate(
        base_spec(
            sampler={"type": sampler},
            objectives=[{"metric": "accuracy"}, {"metric": "robustness"}],
        )
    )


def test_grid_over_a_finite_space() -> None:
    spec = StudySpec.model_validate(
        base_spec(
            sampler={"type": "grid"},
            search_space={
                "lr": {"type": "float", "low": 0.01, "high": 0.05, "step": 0.01},
                "head_depth": {"type": "int", "low": 1, "high": 5, "step": 2},
                "activation": {"type": "categorical", "choices": ["relu", "gelu"]},
            },
        )
    )
    values = grid_values(spec)
    assert values["lr"] == [0.01, 0.02, 0.03, 0.04, 0.05]
    assert values["head_depth"] == [1, 3, 5]
    assert grid_size(spec) == 30


def test_huge_grid_is_rejected_without_enumerating_it() -> None:
    paths = error_paths(
        base_spec(
            sampler={"type": "grid"},
            search_space={"lr": {"type": "float", "low": 1e-9, "high": 1.0, "step": 1e-9}},
        )
    )
    assert "points" in paths["sampler.type"]


def test_from_text_reads_yaml_and_json() -> None:
    data = base_spec()
    from_yaml = StudySpec.from_text(yaml.safe_dump(data))
    from_json = StudySpec.from_text(json.dumps(data))
    assert from_yaml == from_json


def test_from_text_reports_paths_and_syntax_errors() -> None:
    with pytest.raises(SpecError) as info:
        StudySpec.from_text(yaml.safe_dump(base_spec(priority=-1)))
    assert info.value.errors[0]["path"] == "priority"
    with pytest.raises(SpecError):
        StudySpec.from_text("name: [unclosed")
    with pytest.raises(SpecError):
        StudySpec.from_text("- a list")


def test_validate_params_accepts_values_in_the_space() -> None:
    spec = StudySpec.model_validate(base_spec())
    params = validate_params(spec, {"lr": 0.01, "activation": "gelu", "head_depth": 2.0})
    assert params == {"lr": 0.01, "activation": "gelu", "head_depth": 2}
    assert isinstance(params["head_depth"], int)


@pytest.mark.parametrize(
    ("params", "path"),
    [
        ({"lr": 1.0}, "params.lr"),
        ({"lr": "fast"}, "params.lr"),
        ({"activation": "swish"}, "params.activation"),
        ({"head_depth": 1.5}, "params.head_depth"),
        ({"head_depth": True}, "params.head_depth"),
        ({"dropout": 0.1}, "params.dropout"),
    ],
)
def test_validate_params_rejects_values_outside_the_space(params: dict, path: str) -> None:
    spec = StudySpec.model_validate(base_spec())
    with pytest.raises(SpecError) as info:
        validate_params(spec, params)
    assert [e["path"] for e in info.value.errors] == [path]


def test_validate_params_respects_steps() -> None:
    spec = StudySpec.model_validate(
        base_spec(search_space={"lr": {"type": "float", "low": 0.01, "high": 0.1, "step": 0.01}})
    )
    assert validate_params(spec, {"lr": 0.03}) == {"lr": 0.03}
    with pytest.raises(SpecError):
        validate_params(spec, {"lr": 0.035})


def test_json_schema_documents_every_field() -> None:
    schema = StudySpec.model_json_schema()
    for name, prop in schema["properties"].items():
        assert prop.get("description"), name


def test_every_corruption_is_selectable() -> None:
    spec = StudySpec.model_validate(base_spec(robustness={"corruptions": list(CORRUPTIONS)}))
    assert spec.robustness.corruptions == list(CORRUPTIONS)
    assert set(CORRUPTIONS) >= {"blur", "contrast", "brightness", "pixelate", "shot_noise"}


def test_robustness_components_are_named_as_the_engine_reports_them() -> None:
    spec = StudySpec.model_validate(
        base_spec(robustness={"fgsm_eps": [0.1], "pgd": {}, "corruptions": ["pixelate"]})
    )
    assert spec.robustness.component_names() == [
        "gaussian_0.1",
        "gaussian_0.3",
        "fgsm_0.1",
        "pgd_0.03",
        "pixelate",
    ]


def test_trial_params_are_sampled_over_fixed_over_defaults_and_typed() -> None:
    spec = StudySpec.model_validate(base_spec(fixed_params={"batch_size": 32, "dropout": 0}))
    params = spec.trial_params({"lr": 0.01, "head_depth": 2.0})
    assert set(params) == set(KNOWN_PARAMS)
    assert params["lr"] == 0.01 and params["head_depth"] == 2
    assert isinstance(params["head_depth"], int) and isinstance(params["dropout"], float)
    assert params["batch_size"] == 32  # fixed
    assert params["optimizer"] == KNOWN_PARAMS["optimizer"].default


@pytest.mark.parametrize(
    ("params", "path", "message"),
    [
        ({"momentum": 0.9}, "params.momentum", "unknown hyperparameter"),
        ({"head_depth": 9}, "params.head_depth", "must be in [1, 8]"),
        ({"batch_size": 12.5}, "params.batch_size", "must be an integer"),
        ({"activation": "swish"}, "params.activation", "must be one of relu"),
        ({"lr": "fast"}, "params.lr", "must be a number"),
    ],
)
def test_trial_params_reject_what_the_engine_cannot_use(
    params: dict[str, Any], path: str, message: str
) -> None:
    spec = StudySpec.model_validate(base_spec())
    with pytest.raises(SpecError) as info:
        spec.trial_params(params)
    ((error),) = info.value.errors
    assert error["path"] == path and message in error["message"]


def test_an_assignment_carries_the_spec_validated() -> None:
    spec = StudySpec.model_validate(base_spec(robustness={"pgd": {}}))
    lease = {
        "trial_id": 1,
        "study_id": 2,
        "number": 0,
        "params": {"lr": 0.01},
        "spec": spec.model_dump(mode="json"),
        "lease_expires_at": "2030-01-01T00:00:00Z",
    }
    assignment = Assignment.model_validate_json(json.dumps(lease))
    assert assignment.spec == spec
    assert assignment.spec.robustness.pgd is not None and assignment.spec.robustness.pgd.eps == 0.03
    lease["spec"] = {**lease["spec"], "compression": {"prune_amount": 0.99}}
    with pytest.raises(ValidationError) as info:
        Assignment.model_validate(lease)
    assert [field_path(e["loc"]) for e in info.value.errors()] == ["spec.compression.prune_amount"]


def test_the_built_in_glyph_task_and_its_source_model_are_known() -> None:
    spec = StudySpec.model_validate(
        base_spec(source_model="builtin:glyphs-cnn", dataset="builtin:glyphs-s1")
    )
    assert (spec.source_model, spec.dataset) == ("builtin:glyphs-cnn", "builtin:glyphs-s1")
    message = error_paths(base_spec(source_model="builtin:glyph-cnn"))["source_model"]
    assert "digits-cnn" in message and "glyphs-cnn" in message
    message = error_paths(base_spec(dataset="builtin:glyph"))["dataset"]
    assert "glyphs" in message and "glyphs-s1" in message
