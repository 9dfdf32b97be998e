"""Every benchmark runs at its tiny size and writes well-formed JSON with positive figures.

No timing is asserted: speed is a ratio the benchmarks report, not a test.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, pretrained_source_models, subprocess_env

pytestmark = pytest.mark.slow


def run_benchmark(args: list[str], out: Path) -> dict:
    result = subprocess.run(
        [*args, "--tiny", "--out", str(out)],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "|---" in result.stdout  # the summary table
    files = list(out.glob("*.json"))
    assert len(files) == 1, files
    body = json.loads(files[0].read_text())
    assert body["tiny"] is True
    assert body["machine"]["cpus"] >= 1
    return body


def positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def module(name: str) -> list[str]:
    return [sys.executable, "-m", f"bench.{name}"]


def test_service_throughput_reports_trials_per_second_of_both_sides(tmp_path: Path) -> None:
    body = run_benchmark(module("service_throughput"), tmp_path)
    assert body["runs"]
    for run in body["runs"]:
        for pair in run["pairs"]:
            assert pair["service"]["trials"] == body["config"]["trials_per_run"]
            assert pair["optuna"]["trials"] == body["config"]["trials_per_run"]
        assert positive(run["service_trials_per_s"])
        assert positive(run["optuna_trials_per_s"])
        assert positive(run["ratio_service_over_optuna"])


def test_lease_latency_reports_median_and_p90_per_size(tmp_path: Path) -> None:
    body = run_benchmark(module("lease_latency"), tmp_path)
    sizes = [row["completed_trials"] for row in body["sizes"]]
    assert sizes == body["config"]["sizes"]
    for row in body["sizes"]:
        for side in ("service", "optuna"):
            cycle = row[side]["cycle_ms"]
            assert cycle["n"] == body["config"]["samples_per_size"]
            assert positive(cycle["median"]) and cycle["p90"] >= cycle["median"]
        assert positive(row["ratio_median_service_over_optuna"])


def test_trial_cost_reports_overhead_and_cache_speedup(tmp_path: Path) -> None:
    body = run_benchmark(module("trial_cost"), tmp_path)
    for key in ("overhead_ratio_head", "overhead_ratio_finetune1", "feature_cache_speedup"):
        assert positive(body[key]), key
    for stats in body["trial_s"].values():
        assert positive(stats["median"])
    assert all(0 <= acc <= 1 for acc in body["test_accuracy"].values())


def test_search_quality_reports_trials_and_time_to_target(tmp_path: Path) -> None:
    from workers.transfer import builtin

    cache = pretrained_source_models()
    builtin.load_or_pretrain(cache, builtin.GLYPHS_ARCH)  # once per test run, shared
    body = run_benchmark(
        [*module("search_quality"), "--cache-dir", str(cache), "--jobs", "2", "--tpe-startup", "1"],
        tmp_path,
    )
    assert 0 < body["best_accuracy_any_run"] <= 1
    assert body["config"]["dataset"] == "builtin:glyphs"
    assert body["config"]["warm_from"] == "builtin:glyphs-s1"
    assert body["config"]["source_model"] == "builtin:glyphs-cnn"
    assert body["config"]["jobs"] == 2  # seeds in two processes, gathered in seed order
    assert body["config"]["tpe"] == "TPESampler(seed, multivariate=True, n_startup_trials=1)"
    assert [log[0]["warm_start_from"] for log in body["trials"]["tpe_hyperband_warm"]] == [
        f"prior-{seed}/{number}"
        for seed, prior in enumerate(body["priors"])
        for number in [max(range(len(prior)), key=lambda n: prior[n]["accuracy"] or 0)]
    ]
    assert set(body["arms"]) == {
        "random_nopruning",
        "tpe_hyperband",
        "tpe_hyperband_warm",
        "tpe_hyperband_warm_observe",
    }
    for out in body["thresholds"].values():
        for arm in out["arms"].values():
            assert arm["runs"] == body["config"]["seeds"]
            assert positive(arm["median_trials"]) and positive(arm["median_seconds"])
            # Epochs trained up to the target: one a trial at --tiny (1 epoch).
            assert arm["median_epochs"] == arm["median_trials"]
        assert positive(out["ratio_seconds_tpe_over_random"])
        assert positive(out["ratio_seconds_warm_over_cold"])
        assert positive(out["ratio_seconds_observe_over_cold"])
    assert 0 < body["discrimination"]["ratio"] <= 1
    # The warm-started runs begin with the prior study's best, marked with their origin.
    for arm in ("tpe_hyperband_warm", "tpe_hyperband_warm_observe"):
        for log in body["trials"][arm]:
            assert log[0]["warm_start_from"].startswith("prior-")
    # The observing arm's sampler read each prior's completed trials.
    assert len(body["observations_per_run"]) == body["config"]["seeds"]
    for prior, observed in zip(body["priors"], body["observations_per_run"], strict=True):
        assert observed == sum(e["state"] == "COMPLETE" for e in prior)
    # Time to target counts fine-tuning only: part of each trial's whole time.
    for logs in body["trials"].values():
        for entry in (e for log in logs for e in log):
            assert 0 < entry["train_seconds"] < entry["seconds"]
    # The best configuration was trained again with other seeds, and that spread is reported.
    spread = body["best_configuration_seed_spread"]
    best = max(
        e["accuracy"]
        for logs in body["trials"].values()
        for log in logs
        for e in log
        if e["accuracy"]
    )
    assert spread["params"] in [
        e["params"]
        for logs in body["trials"].values()
        for log in logs
        for e in log
        if e["accuracy"] == best
    ]
    assert len(spread["accuracies"]) == 2
    assert spread["min"] <= spread["mean"] <= spread["max"] <= 1


def test_gpu_script_runs_on_the_cpu_at_tiny_size(tmp_path: Path) -> None:
    # The script's own interpreter choice is for a node; here, the suite's interpreter.
    body = run_benchmark(["env", f"PYTHON={sys.executable}", "bash", "bench/gpu.sh"], tmp_path)
    assert body["config"]["size"] == 32
    assert set(body["variants"]) == {
        "fp32",
        "amp",
        "fp32+channels_last",
        "amp+channels_last",
        "fp32+cache",
        "amp+cache",
    }
    # The engine's own training function ran, its feature cache filled once and then hit.
    assert body["config"]["trained_by"] == "workers.transfer.train.fine_tune"
    trials = body["config"]["trials_per_variant"]
    for name, variant in body["variants"].items():
        assert positive(variant["images_per_s"]) and positive(variant["trials_per_min"])
        cache = ["miss"] + ["hit"] * (trials - 1) if name.endswith("+cache") else ["off"] * trials
        assert variant["feature_cache_per_trial"] == cache, name


def test_source_load_reports_both_build_times_and_their_ratio_per_model(tmp_path: Path) -> None:
    body = run_benchmark(module("source_load"), tmp_path)
    assert set(body["models"]) == set(body["config"]["models"])
    for result in body["models"].values():
        assert len(result["initialised_s"]) == len(result["deferred_s"]) == 1
        assert all(positive(s) for s in (*result["initialised_s"], *result["deferred_s"]))
        assert positive(result["speedup"])


def test_backbones_reports_throughput_and_cache_speedup_per_model(tmp_path: Path) -> None:
    body = run_benchmark(module("backbones"), tmp_path)
    assert set(body["models"]) == set(body["config"]["models"])
    for figures in body["models"].values():
        for trial in ("head_only", "head_only_cached", "unfreeze_1"):
            assert positive(figures[trial]["images_per_s"]), trial
            assert positive(figures[trial]["peak_mb"]), trial
        assert positive(figures["feature_cache_speedup"])


def test_packing_reports_pack_and_slots_speedups_and_the_service_cost(tmp_path: Path) -> None:
    body = run_benchmark(module("packing"), tmp_path)
    config = body["config"]
    for arm, trials in (("pack", config["trials"]), ("slots", config["slot_trials"])):
        assert len(body[arm]) == 2
        for run in body[arm].values():
            assert run["trials"] == trials, (arm, run)
            assert positive(run["trials_per_s"])
    assert positive(body["pack_speedup"]) and positive(body["slots_speedup"])
    # The same parameters both ways, and fused trials end where they end alone.
    assert body["pack_accuracy"]["trials_compared"] == config["trials"]
    assert body["pack_accuracy"]["max_abs_difference"] <= 1e-4
    assert body["slots_accuracy"]["trials_compared"] == config["slot_trials"]
    cost = body["service_cost"]
    assert cost["single"]["trials"] == cost["batch"]["trials"] == config["cost_trials"]
    assert positive(cost["ratio_single_over_batch"])


def test_soak_loses_and_duplicates_nothing_through_api_kills_and_a_database_stop(
    tmp_path: Path,
) -> None:
    body = run_benchmark(module("soak"), tmp_path)
    assert body["duplicated"] == body["lost"] == body["orphans"] == 0, body["duplicated_detail"]
    assert body["invariants_hold"] is True
    # The faults happened: an API process killed and back, the database stopped and back.
    events = [event["event"] for event in body["events"]]
    assert "API process SIGKILL" in events and "API up" in events
    assert any(event.startswith("database stop") for event in events) and "database up" in events
    assert body["handed_out"] >= body["completed"] > 0
    assert body["studies_by_state"].get("completed", 0) > 0
    assert positive(body["failovers"])
    for minute in body["lease_latency_per_minute"]:
        assert positive(minute["p50_ms"]) and minute["p99_ms"] >= minute["p50_ms"]
    for process in ("victim", "witness"):
        assert positive(body["api_rss_mb"][process]["start"])
        assert positive(body["api_rss_mb"][process]["end"])
