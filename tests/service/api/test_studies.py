"""The study API through its HTTP interface on a real PostgreSQL database."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import optuna
import pytest
import sqlalchemy as sa

from tests.service.api.conftest import (
    LiveApi,
    create_study,
    error_of,
    optuna_storage,
    run_trials,
    study_spec,
    unique_name,
)

STUDIES = "/api/v1/studies"


def row_count(api: LiveApi, name: str) -> int:
    engine = sa.create_engine(api.database_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        n = conn.execute(
            sa.text("SELECT count(*) FROM tf_studies WHERE name = :n"), {"n": name}
        ).scalar_one()
    engine.dispose()
    return n


# -- create ---------------------------------------------------------------------


def test_create_study_answers_201_with_the_study(live_api: LiveApi) -> None:
    spec = study_spec()
    answer = live_api.as_("alice").post(STUDIES, json=spec)
    assert answer.status_code == 201, answer.text
    study = answer.json()
    assert study["id"] > 0
    assert study["name"] == spec["name"]
    assert study["owner"] == "alice"
    assert study["state"] == "running"
    assert study["objectives"] == [{"metric": "accuracy", "direction": "maximize"}]
    assert study["spec"]["sampler"]["type"] == "tpe"
    assert study["spec"]["pruner"]["type"] == "hyperband"
    assert study["trial_counts"] == dict.fromkeys(
        ["running", "waiting", "complete", "pruned", "fail"], 0
    )
    assert study["best_trials"] == []


def test_created_study_is_an_optuna_study_with_directions_and_metric_names(
    live_api: LiveApi,
) -> None:
    study = create_study(
        live_api.as_("alice"),
        objectives=[
            {"metric": "accuracy", "direction": "maximize"},
            {"metric": "latency_ms", "direction": "minimize"},
        ],
    )
    loaded = optuna.load_study(study_name=study["optuna_study_name"], storage=live_api.database_url)
    assert loaded.directions == [
        optuna.study.StudyDirection.MAXIMIZE,
        optuna.study.StudyDirection.MINIMIZE,
    ]
    assert loaded.metric_names == ["accuracy", "latency_ms"]
    assert loaded.user_attrs["tunefleet_study_id"] == study["id"]
    assert loaded.user_attrs["tunefleet_spec"]["name"] == study["name"]


def test_create_study_with_a_taken_name_is_409(live_api: LiveApi) -> None:
    spec = study_spec()
    assert live_api.as_("alice").post(STUDIES, json=spec).status_code == 201
    again = live_api.as_("alice").post(STUDIES, json=spec)
    assert again.status_code == 409
    assert spec["name"] in error_of(again)["message"]
    assert row_count(live_api, spec["name"]) == 1


def test_concurrent_creates_of_one_name_make_one_study(live_api: LiveApi) -> None:
    spec = study_spec()

    def create(_: int) -> int:
        # A client per thread: each sends its request while the others do.
        client = live_api.client({"Authorization": f"Bearer {live_api.tokens['alice']}"})
        try:
            return client.post(STUDIES, json=spec).status_code
        finally:
            client.close()

    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = sorted(pool.map(create, range(4)))
    assert statuses == [201, 409, 409, 409]
    assert row_count(live_api, spec["name"]) == 1
    names = optuna.get_all_study_names(storage=optuna_storage(live_api))
    assert names.count(f"alice/{spec['name']}") == 1


def test_another_owner_may_use_the_same_name(live_api: LiveApi) -> None:
    spec = study_spec()
    assert live_api.as_("alice").post(STUDIES, json=spec).status_code == 201
    answer = live_api.as_("bob").post(STUDIES, json=spec)
    assert answer.status_code == 201
    assert answer.json()["optuna_study_name"] == f"bob/{spec['name']}"


def float_param(low: float, high: float, **extra: Any) -> dict[str, Any]:
    return {"type": "float", "low": low, "high": high, **extra}


TWO_OBJECTIVES = [{"metric": "accuracy"}, {"metric": "robustness"}]
INVALID_SPECS = [
    ({"search_space": {"lr": float_param(0.1, 0.01)}}, "search_space.lr.low"),
    ({"search_space": {"lr": float_param(0, 1, log=True)}}, "search_space.lr.low"),
    ({"search_space": {"momentum": float_param(0.1, 0.9)}}, "search_space.momentum"),
    ({"objectives": [{"metric": "f1", "direction": "maximize"}]}, "objectives.0.metric"),
    ({"sampler": {"type": "annealing"}}, "sampler"),
    ({"sampler": {"type": "grid"}}, "sampler.type"),
    ({"source_model": "hf:bert-base-uncased"}, "source_model"),
    ({"source_model": "torchvision:resnet18"}, "source_weights"),
    ({"dataset": "s3://bucket/pets"}, "dataset"),
    ({"budget": {"max_trials": 0}}, "budget.max_trials"),
    ({"budget": {"max_trails": 10}}, "budget.max_trails"),
    ({"pruner": {"type": "median"}, "objectives": TWO_OBJECTIVES}, "pruner.type"),
    ({"name": "Not A Valid Name"}, "name"),
]


@pytest.mark.parametrize(("overrides", "path"), INVALID_SPECS)
def test_invalid_spec_is_422_at_its_path_and_writes_nothing(
    live_api: LiveApi, overrides: dict[str, Any], path: str
) -> None:
    spec = study_spec(**overrides)
    answer = live_api.as_("alice").post(STUDIES, json=spec)
    assert answer.status_code == 422, answer.text
    detail = error_of(answer)
    assert path in [e["loc"] for e in detail["errors"]]
    assert path in detail["message"]
    assert row_count(live_api, spec["name"]) == 0
    names = optuna.get_all_study_names(storage=optuna_storage(live_api))
    assert f"alice/{spec['name']}" not in names


@pytest.mark.parametrize(
    "body",
    [b"[1, 2]", b'"a string"', b"", b'{"name": "x"}'],
)
def test_a_body_of_the_wrong_shape_is_422(live_api: LiveApi, body: bytes) -> None:
    answer = live_api.as_("alice").post(
        STUDIES, content=body, headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 422, answer.text
    assert error_of(answer)["code"] == "invalid"


def test_a_body_that_is_not_json_is_400_with_line_and_column(live_api: LiveApi) -> None:
    answer = live_api.as_("alice").post(
        STUDIES,
        content=b'{"name": "x",\n "dataset": nope}',
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 400, answer.text
    detail = error_of(answer)
    assert detail["code"] == "invalid_json"
    assert detail["message"].startswith("the body is not valid JSON at line 2 column 13")


def test_oversized_body_is_413(live_api: LiveApi) -> None:
    answer = live_api.as_("alice").post(
        STUDIES,
        content=b"{" + b" " * 2_000_000 + b"}",
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 413
    assert error_of(answer)["code"] == "payload_too_large"


def test_overlong_string_is_422(live_api: LiveApi) -> None:
    answer = live_api.as_("alice").post(
        STUDIES, json=study_spec(dataset="imagefolder:/" + "x" * 5000)
    )
    assert answer.status_code == 422
    assert error_of(answer)["path"] == ["dataset"]


# -- list, show -------------------------------------------------------------------


def test_list_studies_filters_by_state_and_paginates(live_api: LiveApi) -> None:
    carol = live_api.as_("root")  # admin sees every owner's studies; use a fresh owner
    ids = [create_study(live_api.as_("bob"), name=unique_name("page"))["id"] for _ in range(5)]
    live_api.as_("bob").post(f"{STUDIES}/{ids[0]}/pause")

    paused = live_api.as_("bob").get(STUDIES, params={"state": "paused"}).json()
    assert ids[0] in [s["id"] for s in paused["data"]]
    assert all(s["state"] == "paused" for s in paused["data"])

    everything = live_api.as_("bob").get(STUDIES, params={"limit": 500}).json()
    assert everything["count"] == len(everything["data"])
    assert all(s["owner"] == "bob" for s in everything["data"])

    first = live_api.as_("bob").get(STUDIES, params={"limit": 2, "offset": 0}).json()
    second = live_api.as_("bob").get(STUDIES, params={"limit": 2, "offset": 2}).json()
    assert len(first["data"]) == 2 and len(second["data"]) == 2
    assert first["count"] == second["count"] == everything["count"]
    assert [s["id"] for s in first["data"] + second["data"]] == [
        s["id"] for s in everything["data"][:4]
    ]
    assert [s["id"] for s in first["data"]] == sorted(ids, reverse=True)[:2]  # newest first
    beyond = live_api.as_("bob").get(STUDIES, params={"offset": 10_000}).json()
    assert beyond["data"] == [] and beyond["count"] == everything["count"]
    assert carol.get(STUDIES, params={"limit": 500}).json()["count"] >= everything["count"]


@pytest.mark.parametrize(
    "params", [{"limit": 0}, {"limit": 501}, {"offset": -1}, {"state": "sleeping"}]
)
def test_list_studies_rejects_bad_query(live_api: LiveApi, params: dict) -> None:
    answer = live_api.as_("alice").get(STUDIES, params=params)
    assert answer.status_code == 422
    assert error_of(answer)["path"][0] == "query"


def test_show_study_by_id_and_by_name(live_api: LiveApi) -> None:
    study = create_study(live_api.as_("alice"))
    by_id = live_api.as_("alice").get(f"{STUDIES}/{study['id']}")
    by_name = live_api.as_("alice").get(f"{STUDIES}/by-name/{study['name']}")
    assert by_id.status_code == by_name.status_code == 200
    assert by_id.json() == by_name.json()
    assert by_id.json()["spec"] == study["spec"]


def test_show_unknown_study_is_404(live_api: LiveApi) -> None:
    assert live_api.as_("alice").get(f"{STUDIES}/999999").status_code == 404
    assert live_api.as_("alice").get(f"{STUDIES}/by-name/no-such-study").status_code == 404


def test_show_counts_trials_and_gives_the_best_one(live_api: LiveApi) -> None:
    study = create_study(live_api.as_("alice"))
    run_trials(live_api, study, [[0.5], [0.9], [0.7]])
    shown = live_api.as_("alice").get(f"{STUDIES}/{study['id']}").json()
    assert shown["trial_counts"]["complete"] == 3
    assert [t["values"] for t in shown["best_trials"]] == [{"accuracy": 0.9}]
    assert shown["best_trials"][0]["number"] == 1


def test_show_multi_objective_study_gives_the_pareto_front(live_api: LiveApi) -> None:
    study = create_study(
        live_api.as_("alice"),
        objectives=[
            {"metric": "accuracy", "direction": "maximize"},
            {"metric": "latency_ms", "direction": "minimize"},
        ],
    )
    # (0.9, 20) and (0.8, 10) are both optimal; (0.7, 30) is dominated.
    run_trials(live_api, study, [[0.9, 20.0], [0.7, 30.0], [0.8, 10.0]])
    shown = live_api.as_("alice").get(f"{STUDIES}/{study['id']}").json()
    assert [t["number"] for t in shown["best_trials"]] == [0, 2]
    assert shown["best_trials"][1]["values"] == {"accuracy": 0.8, "latency_ms": 10.0}


# -- pause, resume, stop ------------------------------------------------------------


def test_pause_resume_stop(live_api: LiveApi) -> None:
    alice = live_api.as_("alice")
    study = create_study(alice)
    base = f"{STUDIES}/{study['id']}"
    assert alice.post(f"{base}/pause").json()["state"] == "paused"
    assert alice.post(f"{base}/pause").json()["state"] == "paused"  # harmless again
    assert alice.post(f"{base}/resume").json()["state"] == "running"
    assert alice.post(f"{base}/stop").json()["state"] == "stopped"
    assert alice.post(f"{base}/stop").json()["state"] == "stopped"
    for action in ("resume", "pause"):
        answer = alice.post(f"{base}/{action}")
        assert answer.status_code == 409
        assert "stopped" in error_of(answer)["message"]
    assert alice.get(base).json()["state"] == "stopped"


# -- delete ----------------------------------------------------------------------------


def test_delete_study_removes_it_and_its_optuna_study(live_api: LiveApi) -> None:
    alice = live_api.as_("alice")
    study = create_study(alice)
    run_trials(live_api, study, [[0.5]])
    answer = alice.delete(f"{STUDIES}/{study['id']}")
    assert answer.status_code == 204
    assert alice.get(f"{STUDIES}/{study['id']}").status_code == 404
    assert alice.delete(f"{STUDIES}/{study['id']}").status_code == 404
    names = optuna.get_all_study_names(storage=optuna_storage(live_api))
    assert study["optuna_study_name"] not in names
    # The name is free again.
    again = alice.post(STUDIES, json={**study["spec"]})
    assert again.status_code == 201
    assert again.json()["trial_counts"]["complete"] == 0


# The worker protocol's models (tunefleet/protocol.py) and FastAPI's own.
OTHER_MODELS = {
    "Assignment", "Heartbeat", "HeartbeatAck", "IntermediateReport", "LeaseRequest",
    "Progress", "PruneDecision", "TrialCompletion", "TrialFailure", "TrialOutcome",
    "HTTPValidationError", "ValidationError",
}  # fmt: skip


def test_openapi_documents_every_route_and_model(live_api: LiveApi) -> None:
    schema = live_api.as_("alice").get("/openapi.json").json()
    paths = schema["paths"]
    for path in (
        "/api/v1/studies",
        "/api/v1/studies/{study_id}",
        "/api/v1/studies/by-name/{name}",
        "/api/v1/studies/{study_id}/pause",
        "/api/v1/studies/{study_id}/resume",
        "/api/v1/studies/{study_id}/stop",
        "/api/v1/studies/{study_id}/trials",
        "/api/v1/studies/{study_id}/trials/{number}",
        "/metrics",
    ):
        assert path in paths, path
    mine = [n for n in schema["components"]["schemas"] if n not in OTHER_MODELS]
    assert {"StudySpec", "StudyDetail", "TrialDetail", "TrialEnqueue"} <= set(mine)
    for name in mine:
        model = schema["components"]["schemas"][name]
        assert model.get("description"), name
        for field, prop in model.get("properties", {}).items():
            assert prop.get("description"), (name, field)
    assert schema["components"]["schemas"]["StudySpec"]["examples"]
    assert live_api.as_("alice").get("/docs").status_code == 200


def test_a_study_whose_optuna_study_was_deleted_elsewhere_still_answers(
    live_api: LiveApi,
) -> None:
    alice = live_api.as_("alice")
    study = create_study(alice)
    optuna.delete_study(study_name=study["optuna_study_name"], storage=optuna_storage(live_api))
    shown = alice.get(f"{STUDIES}/{study['id']}")
    assert shown.status_code == 200 and shown.json()["best_trials"] == []
    assert alice.get(f"{STUDIES}/{study['id']}/trials").json()["count"] == 0
    enqueue = alice.post(f"{STUDIES}/{study['id']}/trials", json={"params": {"lr": 0.01}})
    assert enqueue.status_code == 404
    assert alice.delete(f"{STUDIES}/{study['id']}").status_code == 204


def test_an_unknown_query_parameter_is_422_naming_it(live_api: LiveApi) -> None:
    answer = live_api.as_("alice").get(STUDIES, params={"stat": "running"})
    assert answer.status_code == 422, answer.text
    detail = error_of(answer)
    assert detail["path"] == ["query", "stat"]
    assert "state" in detail["message"]  # it says what the route takes
