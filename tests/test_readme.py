"""The README's examples work as written."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import optuna

from tests.conftest import REPO_ROOT, create_token, subprocess_env

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


def test_using_it_runs_as_written_in_order(api_server, tmp_path: Path):
    """Every block of "Using it", in one shell: tokens, a worker, curl, the CLI."""
    script = "\n".join(
        ["set -euo pipefail"]
        + [_block(marker) for marker in ("using-it:1", "curl-example", "using-it:2")]
    )
    # The one change: the API of this test listens on another port than the README's.
    script = script.replace("http://127.0.0.1:8000", api_server.url)
    env = subprocess_env(database_url=api_server.database_url, cache_dir=tmp_path / "cache")
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env.pop("TUNEFLEET_TOKEN", None)
    # Files, not pipes: the background worker keeps its output open after the shell ends.
    out_path, err_path = tmp_path / "stdout", tmp_path / "stderr"
    with out_path.open("w") as stdout, err_path.open("w") as stderr:
        shell = subprocess.Popen(
            ["bash", "-c", script],
            env=env,
            cwd=REPO_ROOT,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,  # the worker it starts in the background is in its group
        )
    try:
        shell.wait(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGKILL)
    out, err = out_path.read_text(), err_path.read_text()
    assert shell.returncode == 0, f"{out[-3000:]}\n{err[-3000:]}"
    assert "digits-curl completed:" in out
    assert "created study digits-transfer" in out
    assert "study digits-transfer is stopped" in out
    assert "pretraining builtin:digits-cnn once" in err


def test_the_spec_shown_in_the_readme_is_valid():
    from tunefleet.spec import StudySpec

    text = (REPO_ROOT / "README.md").read_text()
    start = text.index("```yaml", text.index("## The study spec")) + len("```yaml")
    spec = StudySpec.from_text(text[start : text.index("```", start)])
    assert spec.warm_start is not None and spec.warm_start.top_k == 5
    assert [o.metric for o in spec.objectives] == ["accuracy", "robustness"]
