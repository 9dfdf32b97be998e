"""The backbone names the API checks without torch: in step with the libraries, and
unknown names or unsuited weights are errors with their path."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tunefleet.spec import SpecError, StudySpec

BASE = {
    "name": "bb",
    "dataset": "builtin:digits-5to9",
    "objectives": [{"metric": "accuracy"}],
    "search_space": {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}},
}
SEARCHED = {"type": "categorical", "choices": ["timm:resnet18", "torchvision:mobilenet_v3_small"]}


def errors_of(**fields) -> list[dict]:
    with pytest.raises(SpecError) as caught:
        StudySpec.from_text(json.dumps({**BASE, **fields}))
    return caught.value.errors


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="needs the worker extra")
def test_the_name_list_is_what_the_installed_libraries_list():
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    try:
        from refresh_backbone_names import TARGET, render
    finally:
        sys.path.pop(0)
    formatted = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "-"],
        input=render(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert formatted == TARGET.read_text(), "run python scripts/refresh_backbone_names.py"


def test_checking_names_imports_neither_torch_nor_timm():
    code = (
        "import sys; from tunefleet.spec import StudySpec; "
        f"StudySpec.model_validate({{**{BASE!r}, 'source_model': 'timm:resnet18', "
        "'source_weights': 'pretrained'}); "
        "print(sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_family_and_unknown_names_point_at_the_field():
    assert errors_of(source_model="keras:resnet")[0]["path"] == "source_model"
    (error,) = errors_of(source_model="timm:resnet_999", source_weights="pretrained")
    assert error["path"] == "source_model" and "tunefleet models" in error["message"]
    (error,) = errors_of(source_model="torchvision:vit_z", source_weights="pretrained")
    assert error["path"] == "source_model"


def test_weights_must_suit_the_family():
    (error,) = errors_of(source_model="timm:resnet18")
    assert error["path"] == "source_weights" and "pretrained" in error["message"]
    (error,) = errors_of(source_model="torchvision:resnet50", source_weights="IMAGENET1K_V9")
    assert "IMAGENET1K_V2" in error["message"]
    spec = StudySpec.model_validate(
        {**BASE, "source_model": "torchvision:resnet50", "source_weights": "IMAGENET1K_V2"}
    )
    assert spec.source_of({}) == ("torchvision:resnet50", "IMAGENET1K_V2")
    assert StudySpec.model_validate(
        {
            **BASE,
            "source_model": "timm:vit_small_patch16_224.augreg_in21k",
            "source_weights": "pretrained",
        }
    )


def test_a_searched_source_model_takes_a_map_of_weights():
    spec = StudySpec.model_validate(
        {
            **BASE,
            "search_space": {**BASE["search_space"], "source_model": SEARCHED},
            "source_weights": {
                "timm:resnet18": "pretrained",
                "torchvision:mobilenet_v3_small": "DEFAULT",
            },
        }
    )
    assert spec.source_model == "timm:resnet18"  # the first choice stands in as the default
    assert spec.source_models() == SEARCHED["choices"]
    assert spec.source_of({"source_model": "torchvision:mobilenet_v3_small"}) == (
        "torchvision:mobilenet_v3_small",
        "DEFAULT",
    )
    assert "source_model" not in spec.trial_params({"source_model": "timm:resnet18"})


def test_a_map_of_weights_must_cover_the_choices_and_nothing_else():
    errors = errors_of(
        search_space={"source_model": {**SEARCHED, "choices": [*SEARCHED["choices"], "timm:nope"]}},
        source_weights={"timm:resnet18": "pretrained", "timm:resnet50": "pretrained"},
    )
    paths = {e["path"] for e in errors}
    assert paths == {
        "search_space.source_model.choices.2",
        "source_weights.timm:resnet50",
        "source_weights.torchvision:mobilenet_v3_small",
    }
    (error,) = errors_of(
        source_model="timm:resnet18", source_weights={"timm:resnet18": "pretrained"}
    )
    assert error["path"] == "source_weights" and "searches" in error["message"]
