"""The training subcommands as real processes: help, errors, build-manifest."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import SHARED_DATA, requires_shared_data
from training import manifest_command, pretrain_command
from training.data.manifest import read_manifest

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_modules_follow_the_cli_contract() -> None:
    for module in (pretrain_command, manifest_command):
        assert isinstance(module.HELP, str) and module.HELP
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        assert callable(module.run)


def test_help_and_config_listing() -> None:
    result = run_cli("pretrain", "--help")
    assert result.returncode == 0 and "--resume" in result.stdout and "--set" in result.stdout
    listing = run_cli("pretrain", "--list-configs")
    assert listing.returncode == 0 and {"smoke", "vit_t-D", "vit_s-all"} <= set(listing.stdout.split())


def test_config_errors_exit_2_with_a_message(tmp_path: Path) -> None:
    result = run_cli("pretrain", "--config", "vit_t-D", "--out", str(tmp_path / "x"), "--set", "optim.lrr=1")
    assert result.returncode == 2 and "optim.lrr" in result.stderr
    missing = run_cli("pretrain", "--config", "vit_t-D", "--out", str(tmp_path / "y"))
    assert missing.returncode == 2 and "--manifest" in missing.stderr


def test_print_config_applies_overrides() -> None:
    result = run_cli("pretrain", "--config", "vit_s-SI", "--print-config", "--set", "mask.per_sample=false")
    config = json.loads(result.stdout)
    assert config["model"]["arch"] == "vit_small_patch16_224" and config["ehr"]["features"] == ["SI"]
    assert config["mask"]["per_sample"] is False


@requires_shared_data
def test_build_manifest_for_the_shared_data(tmp_path: Path) -> None:
    out = tmp_path / "shared.csv"
    result = run_cli("build-manifest", "shared", "--root", str(SHARED_DATA), "--out", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert sum(summary["images"].values()) == 826 + 219
    assert len(read_manifest(out)) == 826 + 219


def test_build_manifest_reports_a_missing_root(tmp_path: Path) -> None:
    result = run_cli("build-manifest", "nih", "--root", str(tmp_path), "--out", str(tmp_path / "m.csv"))
    assert result.returncode == 2 and "Data_Entry_2017" in result.stderr
