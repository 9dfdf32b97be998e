"""`tunefleet demo`: the README's first command, end to end, on the embedded SQLite default."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import optuna
import pytest

from tests.conftest import REPO_ROOT, copy_source_models
from tests.e2e.helpers import processes_mentioning, wait_until

pytestmark = pytest.mark.slow


def _demo_env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFLEET_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "200"
    return env


def test_demo_runs_the_builtin_study_and_leaves_no_process(tmp_path):
    data_dir = tmp_path / "demo"
    copy_source_models(data_dir / "cache")  # pretrained once per test run
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunefleet",
            "demo",
            "--trials",
            "4",
            "--epochs",
            "2",
            "--data-dir",
            str(data_dir),
        ],
        env=_demo_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Pareto front" in result.stdout
    url = f"sqlite:///{data_dir / 'tunefleet.db'}"
    assert f"optuna-dashboard {url}" in result.stdout

    summaries = optuna.get_all_study_summaries(storage=url)
    assert len(summaries) == 1
    study = optuna.load_study(study_name=summaries[0].study_name, storage=url)
    assert study.metric_names == ["accuracy", "robustness"]
    finished = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(finished) == 4
    for trial in finished:
        accuracy, robustness = trial.values
        assert 0.0 <= accuracy <= 1.0
        assert 0.0 <= robustness <= 1.0
        assert {"lr", "activation", "head_depth"} <= set(trial.params)
    assert max(t.values[0] for t in finished) > 0.5  # it really learned digits 5-9
    assert processes_mentioning(str(data_dir)) == []


def test_demo_interrupted_with_ctrl_c_leaves_no_process(tmp_path):
    data_dir = tmp_path / "demo"
    copy_source_models(data_dir / "cache")  # pretrained once per test run
    log = tmp_path / "demo.out"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tunefleet",
                "demo",
                "--trials",
                "50",
                "--epochs",
                "3",
                "--data-dir",
                str(data_dir),
            ],
            env=_demo_env(tmp_path),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
        )
        try:
            wait_until(
                lambda: "study" in log.read_text() and "id" in log.read_text(),
                timeout_s=180,
                what="the demo's study",
            )
            wait_until(
                lambda: len(processes_mentioning(str(data_dir))) >= 3,
                timeout_s=30,
                what="the demo's fleet",
            )
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=60) == 130
        finally:
            if proc.poll() is None:
                proc.kill()
    wait_until(
        lambda: processes_mentioning(str(data_dir)) == [], timeout_s=10, what="no process left"
    )
