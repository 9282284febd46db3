"""The `cxr-msn` console script, run as a real process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import chest_like_picture, make_dicom


def cxr_msn(*args: str) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("cxr-msn") or str(Path(sys.executable).with_name("cxr-msn"))
    return subprocess.run([executable, *args], capture_output=True, text=True, timeout=300)


def test_every_subcommand_has_working_help() -> None:
    from cxrmsn.cli import _commands

    result = cxr_msn("--help")
    assert result.returncode == 0, result.stderr
    commands = list(_commands())
    assert {"info", "init-checkpoint", "export", "serve", "predict", "pretrain", "linear-eval"} <= set(
        commands
    )
    for command in commands:
        assert command in result.stdout
        sub = cxr_msn(command, "--help")
        assert sub.returncode == 0 and "usage: cxr-msn " + command in sub.stdout, sub.stderr


def test_info_prints_metadata_and_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.bin"
    good.write_bytes(make_dicom(chest_like_picture(64, 64), PatientName="MARKER^X"))
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"<html></html>")
    result = cxr_msn("info", str(good), str(bad))
    assert result.returncode == 1
    good_line, bad_line = (json.loads(line) for line in result.stdout.splitlines())
    assert good_line["format"] == "dicom" and good_line["width"] == 64
    assert bad_line["error"] == "unsupported_format" and bad_line["status"] == 415
    assert "MARKER" not in result.stdout + result.stderr


def test_init_checkpoint_writes_a_loadable_untrained_model(tmp_path: Path) -> None:
    out = tmp_path / "nano.safetensors"
    result = cxr_msn("init-checkpoint", str(out), "--arch", "vit_nano_patch16_224", "--seed", "3")
    assert result.returncode == 0, result.stderr
    from cxrmsn.checkpoint import load_classifier

    _, metadata = load_classifier(out)
    assert metadata.architecture == "vit_nano_patch16_224"
    assert metadata.trained_labels == [] and "untrained" in metadata.training_data["summary"]


def test_init_checkpoint_preprocesses_to_the_architectures_input_size(tmp_path: Path) -> None:
    out = tmp_path / "nano64.safetensors"
    assert cxr_msn("init-checkpoint", str(out), "--arch", "vit_nano_patch8_64").returncode == 0
    from cxrmsn.checkpoint import read_metadata

    preprocessing = read_metadata(out).preprocessing
    assert (preprocessing["resize"], preprocessing["crop"]) == (64, 64)


def test_a_command_whose_extra_is_missing_names_the_extra_to_install() -> None:
    # torch blocked in a fresh interpreter, as in a `serve`-only install.
    script = (
        "import sys; sys.modules['torch'] = None\n"
        "from cxrmsn.cli import main\n"
        "sys.argv = ['cxr-msn', 'pretrain', '--config', 'smoke', '--out', 'unused']\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "pip install 'cxr-msn[train]'" in result.stderr


def test_the_checkpoint_module_names_its_extra_when_torch_is_missing() -> None:
    script = "import sys; sys.modules['torch'] = None\nimport cxrmsn.checkpoint\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "pip install 'cxr-msn[train]'" in result.stderr
