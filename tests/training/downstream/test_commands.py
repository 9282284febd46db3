"""The downstream subcommands: CLI contract, help that explains every option, errors, a real smoke run."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import requires_shared_data
from training import (
    compare_command,
    evaluate_command,
    experiment_command,
    finetune_command,
    linear_eval_command,
    report_command,
)
from training.__main__ import main

MODULES = (
    linear_eval_command,
    finetune_command,
    evaluate_command,
    compare_command,
    report_command,
    experiment_command,
)
NAMES = ("linear-eval", "finetune", "evaluate", "compare", "report", "experiment")
REPO = Path(__file__).resolve().parents[3]


def test_modules_follow_the_cli_contract() -> None:
    for module in MODULES:
        assert isinstance(module.HELP, str) and module.HELP and module.__doc__
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        assert callable(module.run)
        undocumented = [a.dest for a in parser._actions if a.dest != "help" and not a.help]
        assert undocumented == [], f"{module.__name__}: options without help: {undocumented}"


def test_the_command_list(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    listing = capsys.readouterr().out
    assert exit_info.value.code == 0 and all(name in listing for name in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0 and "--out" in capsys.readouterr().out


def test_print_config_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["linear-eval", "--config", "smoke", "--print-config", "--set", "augment.copies=3"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["name"] == "smoke" and config["augment"]["copies"] == 3 and config["head"]["cosine_lrs"]
    assert main(["linear-eval", "--set", "head.lrr=1", "--print-config"]) == 2
    assert "head.lrr" in capsys.readouterr().err
    assert (
        main(
            [
                "linear-eval",
                str(tmp_path / "missing.safetensors"),
                "--out",
                str(tmp_path / "o"),
                "--config",
                "smoke",
            ]
        )
        == 2
    )
    assert "no encoder checkpoint" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert main(["compare", str(tmp_path), str(tmp_path)]) == 2
    assert main(["finetune", "--config", "nope", "--print-config"]) == 2
    assert main(["experiment", "--out", str(tmp_path / "e"), "--variants", "vanilla,nope"]) == 2
    assert "variants" in capsys.readouterr().err
    missing = str(tmp_path / "no-data")
    assert main(["experiment", "--out", str(tmp_path / "e"), "--shared-root", missing]) == 2
    assert "pass it with --shared-root or set CXR_MSN_DATA_ROOT" in capsys.readouterr().err


@pytest.mark.slow
@requires_shared_data
def test_smoke_linear_eval_on_the_shared_data(encoder_file: Path, tmp_path: Path) -> None:
    """The smoke config as a real process on ../shared/data (a nano encoder keeps it fast)."""
    out = tmp_path / "smoke"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "linear-eval",
            str(encoder_file),
            "--config",
            "smoke",
            "--out",
            str(out),
            "--set",
            f"data.cache_dir={tmp_path / 'cache'}",
            "metrics.resamples=200",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    masks = metrics["label_masks"]
    for label in (
        "Enlarged Cardiomediastinum",
        "Fracture",
        "Lung Opacity",
        "Pleural Other",
        "Support Devices",
    ):
        assert masks["train"][label]["counted"] == 0  # NIH and covid never annotate these: not negatives
        assert metrics["test"]["per_label"][label]["reason"] == "not annotated in the test split"
    splits = metrics["training_data"]["splits"]
    assert (splits["train"]["images"], splits["valid"]["images"], splits["test"]["images"]) == (64, 32, 32)
    # covid annotates only Pneumonia and No Finding: its images never count for the other labels
    covid = splits["train"]["datasets"].get("covid", 0)
    assert masks["train"]["Atelectasis"]["counted"] == splits["train"]["datasets"]["nih1000"]
    nih = splits["train"]["datasets"]["nih1000"]
    assert (
        nih <= masks["train"]["Pneumonia"]["counted"] <= nih + covid
    )  # covid annotates Pneumonia (2 blanks)
    assert set(metrics["test"]["macro"]["labels"]) <= set(metrics["trained_labels"])
    assert json.loads(result.stdout)["test_macro_auroc"] == metrics["test"]["macro"]["auroc"]
