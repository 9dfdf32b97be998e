"""The trials of a study through the API's HTTP interface: list, show, enqueue."""

from __future__ import annotations

import warnings
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from service.search import distributions
from tests.service.api.conftest import LiveApi, create_study, error_of
from tunefleet.spec import StudySpec


def trials_url(study: dict[str, Any]) -> str:
    return f"/api/v1/studies/{study['id']}/trials"


def load(api: LiveApi, study: dict[str, Any]) -> tuple[optuna.Study, StudySpec]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        storage = optuna.storages.RDBStorage(api.database_url, skip_compatibility_check=True)
    optuna_study = optuna.load_study(study_name=study["optuna_study_name"], storage=storage)
    return optuna_study, StudySpec.model_validate(study["spec"])


@pytest.fixture(scope="module")
def two_objective_study(live_api: LiveApi) -> dict[str, Any]:
    """A study with trials in every state, as workers would leave them:
    numbers 0-3 complete, 4 pruned, 5 failed, 6 running. The tests using it only read."""
    study = create_study(
        live_api.as_("alice"),
        objectives=[
            {"metric": "accuracy", "direction": "maximize"},
            {"metric": "latency_ms", "direction": "minimize"},
        ],
    )
    optuna_study, spec = load(live_api, study)
    for accuracy, latency in [(0.6, 30.0), (0.9, 50.0), (0.75, 10.0), (0.8, 20.0)]:
        trial = optuna_study.ask(distributions(spec))
        optuna_study._storage.set_trial_intermediate_value(trial._trial_id, 0, accuracy - 0.1)
        optuna_study._storage.set_trial_intermediate_value(trial._trial_id, 1, accuracy)
        trial.set_user_attr("artifact", f"/artifacts/{trial.number}.safetensors")
        trial.set_user_attr("robustness_fgsm", 0.5)
        optuna_study.tell(trial, [accuracy, latency])
    optuna_study.tell(optuna_study.ask(distributions(spec)), state=TrialState.PRUNED)
    optuna_study.tell(optuna_study.ask(distributions(spec)), state=TrialState.FAIL)
    optuna_study.ask(distributions(spec))
    return study


def test_list_trials_in_number_order(live_api: LiveApi, two_objective_study: dict) -> None:
    page = live_api.as_("alice").get(trials_url(two_objective_study)).json()
    assert page["count"] == 7
    assert [t["number"] for t in page["data"]] == list(range(7))
    states = [t["state"] for t in page["data"]]
    assert states == ["complete"] * 4 + ["pruned", "fail", "running"]
    first = page["data"][0]
    assert first["values"] == {"accuracy": 0.6, "latency_ms": 30.0}
    assert set(first["params"]) == {"lr", "activation", "head_depth"}
    assert first["artifact"] == "/artifacts/0.safetensors"
    assert first["duration_s"] is not None and first["duration_s"] >= 0
    assert first["last_step"] == 1


def test_list_trials_filters_by_state(live_api: LiveApi, two_objective_study: dict) -> None:
    url = trials_url(two_objective_study)
    complete = live_api.as_("alice").get(url, params={"state": "complete"}).json()
    assert complete["count"] == 4
    assert {t["state"] for t in complete["data"]} == {"complete"}
    several = live_api.as_("alice").get(url, params=[("state", "pruned"), ("state", "fail")])
    assert [t["number"] for t in several.json()["data"]] == [4, 5]


def test_list_trials_orders_by_a_metric_best_first(
    live_api: LiveApi, two_objective_study: dict
) -> None:
    url = trials_url(two_objective_study)
    by_accuracy = live_api.as_("alice").get(url, params={"order_by": "accuracy"}).json()
    # Highest accuracy first; trials without a value come last.
    assert [t["number"] for t in by_accuracy["data"]][:4] == [1, 3, 2, 0]
    assert all(t["values"] is None for t in by_accuracy["data"][4:])
    by_latency = live_api.as_("alice").get(url, params={"order_by": "latency_ms"}).json()
    assert [t["number"] for t in by_latency["data"]][:4] == [2, 3, 0, 1]
    reversed_ = live_api.as_("alice").get(
        url, params={"order_by": "latency_ms", "order": "desc", "state": "complete"}
    )
    assert [t["number"] for t in reversed_.json()["data"]] == [1, 0, 3, 2]


def test_list_trials_paginates(live_api: LiveApi, two_objective_study: dict) -> None:
    url = trials_url(two_objective_study)
    pages = [
        live_api.as_("alice")
        .get(url, params={"order_by": "accuracy", "limit": 3, "offset": offset})
        .json()
        for offset in (0, 3, 6)
    ]
    numbers = [t["number"] for page in pages for t in page["data"]]
    assert sorted(numbers) == list(range(7))
    assert [len(page["data"]) for page in pages] == [3, 3, 1]
    assert {page["count"] for page in pages} == {7}


def test_order_by_an_unknown_metric_is_422(live_api: LiveApi, two_objective_study: dict) -> None:
    answer = live_api.as_("alice").get(
        trials_url(two_objective_study), params={"order_by": "robustness"}
    )
    assert answer.status_code == 422
    detail = error_of(answer)
    assert detail["path"] == ["query", "order_by"]
    assert "accuracy, latency_ms" in detail["message"]


def test_show_trial_in_full(live_api: LiveApi, two_objective_study: dict) -> None:
    trial = live_api.as_("alice").get(f"{trials_url(two_objective_study)}/1").json()
    assert trial["number"] == 1
    assert trial["state"] == "complete"
    assert trial["values"] == {"accuracy": 0.9, "latency_ms": 50.0}
    assert trial["intermediate_values"] == {"0": pytest.approx(0.8), "1": 0.9}
    assert trial["user_attrs"]["robustness_fgsm"] == 0.5
    assert trial["artifact"] == "/artifacts/1.safetensors"
    assert trial["datetime_start"] and trial["datetime_complete"]
    running = live_api.as_("alice").get(f"{trials_url(two_objective_study)}/6").json()
    assert running["state"] == "running" and running["values"] is None


def test_show_unknown_trial_is_404(live_api: LiveApi, two_objective_study: dict) -> None:
    answer = live_api.as_("alice").get(f"{trials_url(two_objective_study)}/99")
    assert answer.status_code == 404
    assert "99" in error_of(answer)["message"]


def test_enqueued_trial_is_waiting_and_runs_with_its_params(live_api: LiveApi) -> None:
    study = create_study(live_api.as_("alice"))
    answer = live_api.as_("alice").post(
        trials_url(study), json={"params": {"lr": 0.01, "activation": "gelu", "head_depth": 2}}
    )
    assert answer.status_code == 201, answer.text
    trial = answer.json()
    assert trial["state"] == "waiting"
    assert trial["params"] == {"lr": 0.01, "activation": "gelu", "head_depth": 2}
    listed = live_api.as_("alice").get(trials_url(study), params={"state": "waiting"}).json()
    assert [t["number"] for t in listed["data"]] == [trial["number"]]
    # The next ask (what a lease does) runs exactly these parameters.
    optuna_study, spec = load(live_api, study)
    asked = optuna_study.ask(distributions(spec))
    assert asked.number == trial["number"]
    assert asked.params == {"lr": 0.01, "activation": "gelu", "head_depth": 2}


def test_enqueue_a_partial_parameter_set(live_api: LiveApi) -> None:
    study = create_study(live_api.as_("alice"))
    answer = live_api.as_("alice").post(trials_url(study), json={"params": {"head_depth": 3}})
    assert answer.status_code == 201
    optuna_study, spec = load(live_api, study)
    asked = optuna_study.ask(distributions(spec))
    assert asked.params["head_depth"] == 3 and set(asked.params) == set(spec.search_space)


@pytest.mark.parametrize(
    ("params", "path"),
    [
        ({"lr": 0.5}, ["params", "lr"]),
        ({"activation": "swish"}, ["params", "activation"]),
        ({"head_depth": 1.5}, ["params", "head_depth"]),
        ({"dropout": 0.1}, ["params", "dropout"]),
    ],
)
def test_enqueue_outside_the_search_space_is_422(
    live_api: LiveApi, params: dict, path: list
) -> None:
    study = create_study(live_api.as_("alice"))
    answer = live_api.as_("alice").post(trials_url(study), json={"params": params})
    assert answer.status_code == 422
    assert error_of(answer)["path"] == path
    assert live_api.as_("alice").get(trials_url(study)).json()["count"] == 0


def test_enqueue_rejects_a_malformed_body(live_api: LiveApi) -> None:
    study = create_study(live_api.as_("alice"))
    answer = live_api.as_("alice").post(trials_url(study), json={"parameters": {"lr": 0.01}})
    assert answer.status_code == 422
    assert {e["loc"] for e in error_of(answer)["errors"]} >= {"parameters", "params"}


def test_enqueue_in_a_stopped_study_is_409(live_api: LiveApi) -> None:
    study = create_study(live_api.as_("alice"))
    live_api.as_("alice").post(f"/api/v1/studies/{study['id']}/stop")
    answer = live_api.as_("alice").post(trials_url(study), json={"params": {"lr": 0.01}})
    assert answer.status_code == 409
    assert "stopped" in error_of(answer)["message"]
