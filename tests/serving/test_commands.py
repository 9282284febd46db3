"""`cxr-msn predict` and `cxr-msn serve`, and packaging: real processes, no server mocks."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from PIL import Image

from cxrmsn.labels import LABELS
from tests.helpers import chest_like_picture, make_dicom, to_png
from tests.serving.conftest import REPO_ROOT

BIN = Path(sys.executable).parent


def cxr_msn(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "cxr-msn"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        cwd=REPO_ROOT,
    )


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    (folder / "a.png").write_bytes(to_png(chest_like_picture(200, 180, seed=1)))
    (folder / "nested").mkdir()
    (folder / "nested" / "b.dcm").write_bytes(make_dicom(chest_like_picture(200, 180, seed=2)))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return folder


def test_predict_csv_reports_every_file_and_skips_bad_ones(
    image_folder: Path, model_repository: Path
) -> None:
    result = cxr_msn("predict", str(image_folder), "--repository", str(model_repository), "--format", "csv")
    assert result.returncode == 1  # one bad file
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    by_name = {Path(row["file"]).name: row for row in rows}
    assert set(by_name) == {"a.png", "b.dcm", "broken.png"}
    assert by_name["broken.png"]["error"] == "corrupt_input"
    assert 0.0 < float(by_name["a.png"]["Cardiomegaly"]) < 1.0
    assert by_name["b.dcm"]["positive"] == "Cardiomegaly"  # No Finding: over 0 but not validated
    assert "skipped" in result.stderr and "broken.png" in result.stderr
    assert "note: not validated: No Finding" in result.stderr


def test_predict_json_and_overlays(image_folder: Path, model_repository: Path, tmp_path: Path) -> None:
    result = cxr_msn(
        "predict",
        str(image_folder / "a.png"),
        "--repository",
        str(model_repository),
        "--format",
        "json",
        "--overlay-dir",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["labels"] == list(LABELS) and record["attention"]["shape"] == [14, 14]
    assert Image.open(tmp_path / "a_attention.png").size == (448, 448)


def test_predict_writes_dicom_outputs_for_dicom_inputs(
    image_folder: Path, model_repository: Path, tmp_path: Path
) -> None:
    dicom = image_folder / "nested" / "b.dcm"
    result = cxr_msn(
        "predict",
        str(image_folder / "a.png"),
        str(dicom),
        "--repository",
        str(model_repository),
        "--dicom-dir",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert "no DICOM output for" in result.stderr and "a.png: it is a png" in result.stderr
    source = pydicom.dcmread(dicom, stop_before_pixels=True)
    uid = source.SOPInstanceUID
    assert sorted(path.name for path in tmp_path.iterdir()) == [f"{uid}.sc.dcm", f"{uid}.sr.dcm"]
    report = pydicom.dcmread(tmp_path / f"{uid}.sr.dcm")
    capture = pydicom.dcmread(tmp_path / f"{uid}.sc.dcm")
    assert report.Modality == "SR" and report.StudyInstanceUID == source.StudyInstanceUID
    assert capture.StudyInstanceUID == source.StudyInstanceUID
    assert capture.pixel_array.shape == (448, 448, 3)


def test_predict_table(image_folder: Path, model_repository: Path) -> None:
    result = cxr_msn("predict", str(image_folder / "a.png"), "--repository", str(model_repository))
    assert result.returncode == 0 and "top findings" in result.stdout and "a.png" in result.stdout


def test_serve_refuses_without_a_model(tmp_path: Path) -> None:
    result = cxr_msn("serve", "--repository", str(tmp_path), "--check-only")
    assert result.returncode == 2
    assert "No trained model is bundled yet" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "truncated or replaced"),
        (lambda p: p.write_bytes(p.read_bytes()[:-4] + b"\x00\x00\x00\x01"), "modified or corrupt"),
        (lambda p: p.unlink(), "is missing"),
    ],
    ids=["truncated", "modified", "missing"],
)
def test_serve_refuses_a_tampered_model(
    model_repository: Path, tmp_path: Path, tamper: Callable[[Path], object], message: str
) -> None:
    copy = tmp_path / "repository"
    shutil.copytree(model_repository, copy)
    tamper(copy / "cxr_msn" / "1" / "model.onnx")
    result = cxr_msn("serve", "--repository", str(copy), "--port", "1")
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_serve_check_passes_for_a_good_repository(model_repository: Path) -> None:
    result = cxr_msn("serve", "--repository", str(model_repository), "--check-only")
    assert result.returncode == 0, result.stderr


def test_serving_imports_no_torch(model_repository: Path) -> None:
    code = (
        "import sys, serving.service, serving.predict_command, serving.serve_command; "
        "bad = [m for m in ('torch', 'timm', 'torchvision') if m in sys.modules]; "
        "sys.exit(f'serving imported {bad}') if bad else None"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
        env={**os.environ, "MODEL_REPOSITORY": str(model_repository)},
    )
    assert result.returncode == 0, result.stderr
    pins = (REPO_ROOT / "requirements" / "serve.txt").read_text()
    packages = {line.split("==")[0] for line in pins.splitlines() if "==" in line}
    assert not packages & {"torch", "torchvision", "timm"}
    assert {"onnxruntime", "bentoml", "pydicom", "tritonclient", "highdicom"} <= packages


def test_bentoml_build_succeeds_offline(model_repository: Path, tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    for name in ("cxrmsn", "serving"):
        shutil.copytree(REPO_ROOT / name, context / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("bentofile.yaml", "README.md"):
        shutil.copy(REPO_ROOT / name, context / name)
    (context / "requirements").mkdir()
    shutil.copy(REPO_ROOT / "requirements" / "serve.txt", context / "requirements" / "serve.txt")
    shutil.copytree(model_repository, context / "model_repository")
    home = tmp_path / "bentoml-home"
    result = subprocess.run(
        [str(BIN / "bentoml"), "build", ".", "--output", "tag"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=context,
        env={**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    bento_dirs = [p for p in (home / "bentos" / "cxr_msn").iterdir() if p.name != "latest"]
    assert len(bento_dirs) == 1
    source = bento_dirs[0] / "src"
    assert (source / "model_repository" / "manifest.json").is_file()
    assert (source / "serving" / "service.py").is_file() and (
        source / "cxrmsn" / "imaging" / "dicom.py"
    ).is_file()
    assert {path.name for path in (source / "serving" / "ui").iterdir()} == {"index.html", "ui.js", "ui.css"}
    requirements = (bento_dirs[0] / "env" / "python" / "requirements.txt").read_text()
    assert "torch==" not in requirements and "onnxruntime==" in requirements
    assert "highdicom==" in requirements  # DICOM SR / Secondary Capture output


def test_bentoml_serve_itself_refuses_a_tampered_model(model_repository: Path, tmp_path: Path) -> None:
    copy = tmp_path / "repository"
    shutil.copytree(model_repository, copy)
    with (copy / "cxr_msn" / "1" / "model.onnx").open("ab") as handle:
        handle.write(b"\x00")
    result = subprocess.run(
        [str(BIN / "bentoml"), "serve", "serving.service:CXRService", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        env={**os.environ, "MODEL_REPOSITORY": str(copy), "BENTOML_HOME": str(tmp_path / "home")},
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "cxr-msn: refusing to serve" in output and "truncated or replaced" in output
    assert "Traceback" not in output
