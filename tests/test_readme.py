"""The README's examples work as written."""

from __future__ import annotations

import json
import os
import re
import subprocess

import httpx
import optuna

from tests.conftest import REPO_ROOT, create_token

README = (REPO_ROOT / "README.md").read_text()


def _block(marker: str) -> str:
    section = README.split(f"<!-- {marker} -->", 1)[1].split(f"<!-- /{marker} -->", 1)[0]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def test_the_curl_example_creates_a_study_that_optuna_loads(api_server):
    token = create_token(api_server.database_url, scope="user", owner="alice")
    env = {**os.environ, "TUNEFLEET_SERVICE_URL": api_server.url, "TUNEFLEET_TOKEN": token}
    result = subprocess.run(
        ["bash", "-c", _block("curl-example")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    created = json.loads(result.stdout)
    assert created["name"] == "digits-curl"

    study = optuna.load_study(
        study_name=created["optuna_study_name"], storage=api_server.database_url
    )
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE] * 2
    assert study.metric_names == ["accuracy", "robustness"]


def test_the_documented_error_is_what_the_api_answers(api_server):
    token = create_token(api_server.database_url, scope="user", owner="alice")
    spec = json.loads(_block("curl-example").split("-d '", 1)[1].rsplit("'", 1)[0])
    spec["search_space"]["lr"]["low"] = -1.0

    answer = httpx.post(
        f"{api_server.url}/api/v1/studies", json=spec, headers={"Authorization": f"Bearer {token}"}
    )
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert detail["path"] == ["search_space", "lr", "low"]
    assert f'"message": "{detail["message"]}"' in README
    assert (
        httpx.get(
            f"{api_server.url}/api/v1/studies", headers={"Authorization": f"Bearer {token}"}
        ).json()["count"]
        == 0
    )
