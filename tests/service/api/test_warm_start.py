"""Warm start through the API: a new study first runs the best configurations of past ones."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
from optuna.trial import create_trial

from service.search import distributions
from service.warm_start import project_params
from tests.service.api.conftest import LiveApi, create_study, error_of, optuna_storage, study_spec
from tunefleet.protocol import DATASET_FINGERPRINT_ATTR
from tunefleet.spec import StudySpec

STUDIES = "/api/v1/studies"


def add_completed(
    api: LiveApi,
    study: dict[str, Any],
    trials: list[tuple[dict[str, Any], list[float]]],
    attrs: dict[str, Any] | None = None,
) -> None:
    """Completed trials with these params and values, as a worker would leave them."""
    spec = StudySpec.model_validate(study["spec"])
    optuna_study = optuna.load_study(
        study_name=study["optuna_study_name"], storage=optuna_storage(api)
    )
    dists = distributions(spec)
    for params, values in trials:
        optuna_study.add_trial(
            create_trial(
                params=params,
                distributions={k: dists[k] for k in params},
                values=values,
                user_attrs=attrs or {},
            )
        )


def waiting(api: LiveApi, who: str, study: dict[str, Any]) -> list[dict[str, Any]]:
    answer = api.as_(who).get(f"{STUDIES}/{study['id']}/trials", params={"state": "waiting"})
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]


def p(lr: float, activation: str = "relu", head_depth: int = 1) -> dict[str, Any]:
    return {"lr": lr, "activation": activation, "head_depth": head_depth}


def test_named_warm_start_enqueues_the_best_first_projected_and_deduplicated(
    live_api: LiveApi,
) -> None:
    alice = live_api.as_("alice")
    past = create_study(alice)
    add_completed(
        live_api,
        past,
        [
            (p(0.01, "gelu", 3), [0.90]),  # head_depth 3 clips to 2
            (p(0.05, "silu", 2), [0.95]),  # silu is not searched any more: dropped
            (p(0.01, "gelu", 2), [0.80]),  # the same as the first once projected
            (p(0.0001, "relu", 1), [0.20]),  # lr clips up to 1e-3
            (p(0.002, "relu", 1), [0.10]),  # beyond top_k
        ],
    )
    spec = study_spec(
        search_space={
            "lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
            "activation": {"type": "categorical", "choices": ["relu", "gelu"]},
            "head_depth": {"type": "int", "low": 1, "high": 2},
            "dropout": {"type": "float", "low": 0.0, "high": 0.5},
        },
        warm_start={"studies": [past["name"]], "top_k": 3},
    )
    answer = alice.post(STUDIES, json=spec)
    assert answer.status_code == 201, answer.text
    new = answer.json()
    assert new["spec"]["warm_start"] == {"studies": [past["name"]], "top_k": 3, "observe": False}
    queued = waiting(live_api, "alice", new)
    assert [(t["number"], t["params"], t["warm_start_from"]) for t in queued] == [
        (0, {"lr": 0.05, "head_depth": 2}, f"{past['name']}/1"),
        (1, {"lr": 0.01, "activation": "gelu", "head_depth": 2}, f"{past['name']}/0"),
        (2, {"lr": 1e-3, "activation": "relu", "head_depth": 1}, f"{past['name']}/3"),
    ]
    shown = alice.get(f"{STUDIES}/{new['id']}/trials/0").json()
    assert shown["warm_start_from"] == f"{past['name']}/1"
    # The first lease's ask runs the best past configuration; the sampler fills the rest.
    optuna_study = optuna.load_study(
        study_name=new["optuna_study_name"], storage=optuna_storage(live_api)
    )
    asked = optuna_study.ask(distributions(StudySpec.model_validate(new["spec"])))
    assert asked.number == 0 and asked.params["lr"] == 0.05 and "dropout" in asked.params


def test_warm_start_by_id_and_by_several_studies_pools_their_trials(live_api: LiveApi) -> None:
    alice = live_api.as_("alice")
    one, two = create_study(alice), create_study(alice)
    add_completed(live_api, one, [(p(0.01), [0.5]), (p(0.02), [0.7])])
    add_completed(live_api, two, [(p(0.03), [0.6])])
    new = create_study(alice, warm_start={"studies": [one["id"], two["name"]], "top_k": 2})
    assert [t["warm_start_from"] for t in waiting(live_api, "alice", new)] == [
        f"{one['name']}/1",
        f"{two['name']}/0",
    ]


@pytest.mark.parametrize("ref", ["no-such-study", 987654])
def test_a_missing_study_is_422_naming_the_item(live_api: LiveApi, ref: str | int) -> None:
    answer = live_api.as_("alice").post(STUDIES, json=study_spec(warm_start={"studies": [ref]}))
    assert answer.status_code == 422
    assert error_of(answer)["path"] == ["warm_start", "studies", "0"]
    assert "or use auto" in error_of(answer)["message"]


def test_another_owners_study_is_the_same_422_as_a_missing_one(live_api: LiveApi) -> None:
    bobs = create_study(live_api.as_("bob"))
    add_completed(live_api, bobs, [(p(0.01), [0.9])])
    answers = [
        live_api.as_("alice").post(STUDIES, json=study_spec(warm_start={"studies": [ref]}))
        for ref in (bobs["name"], bobs["id"])
    ]
    assert [a.status_code for a in answers] == [422, 422]
    assert "you have no study" in error_of(answers[0])["message"]
    assert bobs["name"] in error_of(answers[0])["message"]  # the name given, nothing more
    listed = live_api.as_("alice").get(STUDIES, params={"limit": 200}).json()["data"]
    assert all(s["owner"] == "alice" for s in listed)


def test_a_malformed_warm_start_is_422_with_its_path(live_api: LiveApi) -> None:
    answer = live_api.as_("alice").post(
        STUDIES, json=study_spec(warm_start={"studies": "all", "top_k": 5})
    )
    assert answer.status_code == 422
    assert "auto" in answer.text and "warm_start" in answer.text


def test_auto_takes_same_source_and_fingerprint_newest_first(live_api: LiveApi) -> None:
    who = "bob"
    client = live_api.as_(who)
    fp = {DATASET_FINGERPRINT_ATTR: "f" * 64}
    older = create_study(client, dataset="builtin:digits-shifted-s1")
    add_completed(live_api, older, [(p(0.02), [0.8])], fp)
    other_data = create_study(client, dataset="builtin:digits-shifted-s1")
    add_completed(live_api, other_data, [(p(0.03), [0.99])], {DATASET_FINGERPRINT_ATTR: "0" * 64})
    newer = create_study(client, dataset="builtin:digits-shifted-s1")
    add_completed(live_api, newer, [(p(0.04), [0.8])], fp)
    # The same data under another source model: not a match.
    other_source = create_study(
        client,
        dataset="builtin:digits-shifted-s1",
        source_model="timm:resnet18",
        source_weights="pretrained",
    )
    add_completed(live_api, other_source, [(p(0.05), [0.9])], fp)

    new = create_study(
        client,
        dataset="builtin:digits-shifted-s1",
        warm_start={"studies": "auto", "top_k": 5},
    )
    # Equal accuracy: the newer study's trial comes first; other fingerprints and other
    # source models are left out.
    assert [t["warm_start_from"] for t in waiting(live_api, who, new)] == [
        f"{newer['name']}/0",
        f"{older['name']}/0",
    ]


def test_auto_ignores_another_source_model(live_api: LiveApi) -> None:
    client = live_api.as_("alice")
    fp = {DATASET_FINGERPRINT_ATTR: "a" * 64}
    past = create_study(
        client,
        dataset="builtin:digits-shifted",
        source_model="torchvision:resnet18",
        source_weights="DEFAULT",
    )
    add_completed(live_api, past, [(p(0.02), [0.8])], fp)
    new = create_study(client, dataset="builtin:digits-shifted", warm_start={"studies": "auto"})
    assert waiting(live_api, "alice", new) == []


def test_auto_without_a_reported_fingerprint_enqueues_nothing(live_api: LiveApi) -> None:
    client = live_api.as_("alice")
    past = create_study(client, dataset="builtin:digits-5to9")
    add_completed(live_api, past, [(p(0.02), [0.8])])  # no fingerprint attribute
    new = create_study(client, dataset="builtin:digits-5to9", warm_start={"studies": "auto"})
    assert new["trial_counts"]["waiting"] == 0


def test_several_objectives_take_the_pareto_front(live_api: LiveApi) -> None:
    client = live_api.as_("alice")
    objectives = [
        {"metric": "accuracy", "direction": "maximize"},
        {"metric": "latency_ms", "direction": "minimize"},
    ]
    past = create_study(client, objectives=objectives)
    add_completed(
        live_api,
        past,
        [
            (p(0.01), [0.9, 5.0]),
            (p(0.02), [0.8, 1.0]),
            (p(0.03), [0.7, 6.0]),  # dominated by both
        ],
    )
    new = create_study(client, objectives=objectives, warm_start={"studies": [past["name"]]})
    assert [t["warm_start_from"] for t in waiting(live_api, "alice", new)] == [
        f"{past['name']}/0",
        f"{past['name']}/1",
    ]


def test_a_metric_the_past_study_only_recorded_still_ranks(live_api: LiveApi) -> None:
    client = live_api.as_("alice")
    past = create_study(client)  # optimised accuracy; latency_ms recorded as an attribute
    add_completed(live_api, past, [(p(0.01), [0.9])], {"latency_ms": 9.0})
    add_completed(live_api, past, [(p(0.02), [0.5])], {"latency_ms": 1.0})
    new = create_study(
        client,
        objectives=[{"metric": "latency_ms", "direction": "minimize"}],
        warm_start={"studies": [past["name"]], "top_k": 1},
    )
    assert [t["warm_start_from"] for t in waiting(live_api, "alice", new)] == [f"{past['name']}/1"]


def test_projection_snaps_to_the_step_and_drops_what_does_not_fit() -> None:
    spec = StudySpec.model_validate(
        study_spec(
            search_space={
                "dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1},
                "head_width": {"type": "int", "low": 16, "high": 64, "step": 16},
                "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
            }
        )
    )
    projected = project_params(
        {"dropout": 0.93, "head_width": 41, "optimizer": "adamw", "lr": 0.1}, spec=spec
    )
    assert projected == {"dropout": 0.5, "head_width": 48}


RESNET, MOBILENET, VIT = "timm:resnet18", "timm:mobilenetv3_small_050", "timm:vit_tiny_patch16_224"


def backbone_space(*choices: str) -> dict[str, Any]:
    space = study_spec()["search_space"]
    return {**space, "source_model": {"type": "categorical", "choices": list(choices)}}


def test_auto_takes_a_past_study_that_searched_an_overlapping_backbone(
    live_api: LiveApi,
) -> None:
    client = live_api.as_("bob")
    fp = {DATASET_FINGERPRINT_ATTR: "b" * 64}
    searched = create_study(
        client,
        dataset="builtin:digits-shifted",
        source_model=RESNET,
        source_weights="pretrained",
        search_space=backbone_space(RESNET, MOBILENET),
    )
    add_completed(
        live_api,
        searched,
        [
            ({**p(0.02), "source_model": MOBILENET}, [0.9]),
            ({**p(0.03), "source_model": RESNET}, [0.8]),
        ],
        fp,
    )
    # No backbone in common: not a match.
    elsewhere = create_study(
        client,
        dataset="builtin:digits-shifted",
        source_model="timm:efficientnet_b0",
        source_weights="pretrained",
    )
    add_completed(live_api, elsewhere, [(p(0.04), [0.99])], fp)
    new = create_study(
        client,
        dataset="builtin:digits-shifted",
        source_model=MOBILENET,
        source_weights="pretrained",
        search_space=backbone_space(MOBILENET, VIT),
        warm_start={"studies": "auto", "top_k": 5},
    )
    # Only the trial on mobilenet, the backbone the two studies share, is enqueued.
    (trial,) = waiting(live_api, "bob", new)
    assert trial["warm_start_from"] == f"{searched['name']}/0"
    assert trial["params"]["source_model"] == MOBILENET


def test_a_fixed_backbone_past_trial_runs_on_its_backbone_in_a_searching_study(
    live_api: LiveApi,
) -> None:
    client = live_api.as_("alice")
    tv = "torchvision:resnet50"
    fixed = create_study(client, source_model=VIT, source_weights="pretrained")
    add_completed(live_api, fixed, [(p(0.02), [0.9])])
    other_weights = create_study(client, source_model=tv, source_weights="IMAGENET1K_V1")
    add_completed(live_api, other_weights, [(p(0.03), [0.95])])
    new = create_study(
        client,
        source_model=tv,
        source_weights={tv: "IMAGENET1K_V2", VIT: "pretrained"},
        search_space=backbone_space(tv, VIT),
        warm_start={"studies": [fixed["name"], other_weights["name"]], "top_k": 5},
    )
    # The ResNet-50 trial ran on other weights: left out; the ViT one is enqueued on ViT,
    # not on whichever backbone the sampler would draw.
    (trial,) = waiting(live_api, "alice", new)
    assert trial["warm_start_from"] == f"{fixed['name']}/0"
    assert trial["params"]["source_model"] == VIT
