"""`tunefleet prefetch` and `tunefleet models`, offline against caches laid out as the
libraries lay them out."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.backbone_caches import TIMM_MODEL, TORCHVISION_MODEL, write_timm_cache
from tests.test_cli import run_cli

TIMM = f"timm:{TIMM_MODEL}"
TORCHVISION = f"torchvision:{TORCHVISION_MODEL}"


def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "two-backbones",
                "dataset": "imagefolder:/data/x",
                "objectives": [{"metric": "accuracy"}],
                "search_space": {
                    "source_model": {"type": "categorical", "choices": [TIMM, TORCHVISION]}
                },
                "source_weights": {TIMM: "pretrained", TORCHVISION: "IMAGENET1K_V1"},
            }
        )
    )
    return path


def test_prefetch_finds_cached_weights_and_names_the_missing_ones_offline(tmp_path: Path):
    cache = tmp_path / "cache"
    hub_file = write_timm_cache(cache)
    result = run_cli(
        "prefetch", "-f", str(spec_file(tmp_path)), "--cache-dir", str(cache), offline="1"
    )
    # The timm weights are cached; the torchvision ones are not and the network is off.
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert TORCHVISION in result.stderr and "offline" in result.stderr
    assert str(hub_file.name) in result.stdout and TIMM in result.stdout


def test_models_lists_names_of_a_family_with_their_cache_state(tmp_path: Path):
    cache = tmp_path / "cache"
    write_timm_cache(cache)
    listed = run_cli("models", "--family", "timm", "test_*", "--cache-dir", str(cache))
    assert listed.returncode == 0, listed.stderr
    rows = dict(line.split() for line in listed.stdout.splitlines())
    assert rows[TIMM] == "cached"
    assert rows["timm:test_vit"] == "-"
    assert all(name.startswith("timm:test_") for name in rows)
    tv = run_cli("models", "--family", "torchvision", "mobilenet*", "--cache-dir", str(cache))
    assert TORCHVISION in tv.stdout
    bad = run_cli("models", "--family", "keras")
    assert bad.returncode == 1 and "timm or torchvision" in bad.stderr
