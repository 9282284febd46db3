"""Fine-tuning, external validation, paired comparison and the report, end to end on generated data."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from cxrmsn.checkpoint import load_checkpoint, load_classifier
from cxrmsn.labels import LABELS
from tests.browser import screenshot_path
from tests.helpers import to_jpeg
from tests.training.downstream.fixtures import picture, small_config
from tests.training.downstream.test_report_html import Page, check_self_contained
from training.__main__ import main
from training.data.chexpert import build_chexpert
from training.data.manifest import write_manifest
from training.downstream.attention import pick_examples
from training.downstream.compare import compare_runs
from training.downstream.config import FinetuneConfig, LabelConfig
from training.downstream.evaluate import evaluate_classifier
from training.downstream.finetune import finetune
from training.downstream.linear_eval import linear_eval
from training.downstream.report import write_report

pytestmark = pytest.mark.slow
CHEXPERT_ORDER = [
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
]


@pytest.fixture(scope="module")
def linear_run(manifest: Path, encoder_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    linear_eval(encoder_file, small_config(manifest, out / "cache"), out / "linear")
    return out / "linear"


def chexpert_root(folder: Path) -> Path:
    """CheXpert-v1.0-small layout: train.csv, valid.csv (the external test set), JPEG files."""
    root = folder / "CheXpert-v1.0-small"
    for split, first, patients in (("train", 1, 4), ("valid", 64541, 10)):
        rows = []
        for patient in range(first, first + patients):
            positive = patient % 2 == 1
            relative = f"{root.name}/{split}/patient{patient:05d}/study1/view1_frontal.jpg"
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            (folder / relative).write_bytes(to_jpeg(picture(positive, seed=100 + patient)))
            values = {
                "Cardiomegaly": "1.0" if positive else "0.0",
                "No Finding": "" if positive else "1.0",
                "Edema": "-1.0" if patient == 64543 else "",
            }
            rows.append(
                [relative, "Female", 60, "Frontal", "PA", *(values.get(n, "") for n in CHEXPERT_ORDER)]
            )
        root.mkdir(parents=True, exist_ok=True)
        with open(root / f"{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_ORDER])
            writer.writerows(rows)
    return root


def test_external_validation_on_a_chexpert_format_test_set(linear_run: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "chexpert.csv"
    write_manifest(manifest, build_chexpert(chexpert_root(tmp_path), valid_fraction=0.25, seed=0))
    paper = small_config(manifest, tmp_path / "cache")
    config = replace(paper, labels=LabelConfig(blank="masked"))
    metrics = evaluate_classifier(linear_run / "classifier.safetensors", config, tmp_path / "external")
    test = metrics["test"]
    assert metrics["protocol"] == "external" and test["images"] == 10
    assert metrics["data"]["label_policy"]["name"] == "masked"
    assert test["macro"]["labels"] == ["Cardiomegaly"]  # masked: No Finding has no negatives
    assert test["per_label"]["No Finding"]["reason"] == "no negatives in the test split"
    assert test["per_label"]["Edema"]["counted"] == 1  # the one uncertain image, as 0
    # the paper's policy: blanks of the labels CheXpert annotates are 0, so No Finding has negatives
    as_paper = evaluate_classifier(linear_run / "classifier.safetensors", paper, tmp_path / "external-paper")
    assert as_paper["data"]["label_policy"]["name"] == "paper"
    assert as_paper["test"]["macro"]["labels"] == ["Cardiomegaly", "No Finding"]
    assert as_paper["test"]["per_label"]["Edema"]["counted"] == 10
    assert test["per_label"]["Cardiomegaly"]["auroc"]["value"] > 0.8
    point = metrics["operating_points"]["Cardiomegaly"]
    assert (
        0 <= point["sensitivity"] <= 1
        and point["threshold"]
        == load_classifier(linear_run / "classifier.safetensors")[1].thresholds["Cardiomegaly"]
    )
    with pytest.raises(ValueError, match="different images"):
        compare_runs(tmp_path / "external", linear_run)


def test_paired_comparison_of_runs(linear_run: Path, manifest: Path, tmp_path: Path) -> None:
    from tests.training.downstream.fixtures import write_encoder

    itself = compare_runs(linear_run, linear_run)
    assert itself["difference"]["value"] == 0 and itself["images"] == 12
    other = write_encoder(tmp_path / "other.safetensors", seed=1)
    linear_eval(other, small_config(manifest, tmp_path / "cache"), tmp_path / "other")
    result = compare_runs(tmp_path / "other", linear_run)
    assert result["labels"] == ["Cardiomegaly", "Edema", "No Finding"]
    assert result["macro_auroc_b"] == pytest.approx(
        json.loads((linear_run / "metrics.json").read_text())["test"]["macro"]["auroc"]["value"], abs=1e-6
    )
    assert "over labels" in result["t_test"]["test"]


def test_finetuning_on_label_fractions(manifest: Path, encoder_file: Path, tmp_path: Path) -> None:
    base = small_config(manifest, tmp_path / "cache")
    config = replace(base, finetune=FinetuneConfig(fractions=(0.5, 1.0), max_epochs=2, batch_size=8, lr=1e-3))
    summary = finetune(encoder_file, config, tmp_path / "ft")
    rows = {row["fraction"]: row for row in summary["fractions"]}
    assert rows[0.5]["train_images"] == 12 and rows[0.5]["train_patients"] == 6
    assert rows[1.0]["train_images"] == 24
    assert (tmp_path / "ft" / "summary.md").read_text().count("\n") == 4
    metrics = json.loads((tmp_path / "ft" / "fraction_0.5" / "metrics.json").read_text())
    assert (
        metrics["protocol"] == "finetune"
        and len(metrics["history"]) <= 2
        and metrics["encoder"]["frozen"] is False
    )
    tuned, _ = load_checkpoint(tmp_path / "ft" / "fraction_1" / "classifier.safetensors", kind="classifier")
    original, _ = load_checkpoint(encoder_file, kind="encoder")
    moved = [name for name in original if not torch.equal(original[name], tuned[f"encoder.{name}"])]
    assert len(moved) > len(original) // 2  # the encoder was trained, not frozen
    with pytest.raises(ValueError, match="already holds results"):
        finetune(encoder_file, config, tmp_path / "ft")


def test_report_writes_markdown_html_and_figures(
    linear_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    assert main(["report", str(linear_run), "--out", str(out), "--attention-images", "3"]) == 0
    assert f"open {out / 'report.html'} in a browser" in capsys.readouterr().out
    text = (out / "report.md").read_text()
    assert "not for clinical use" in text and "not annotated in the test split" in text
    assert "| Cardiomegaly |" in text and "cosine_lr0.01" in text
    figures = (
        "roc_curves.png",
        "pr_curves.png",
        "embeddings.png",
        "attention.png",
        "training_curves.png",
        "reliability.png",  # calibration before and after (linear evaluation fits temperatures)
    )
    for name in figures:
        with Image.open(out / name) as image:
            assert image.size[0] > 300 and image.size[1] > 200
        assert f"]({name})" in text

    page = Page((out / "report.html").read_text())
    assert sorted(check_self_contained(page)) == sorted((out / name).read_bytes() for name in figures)
    page_text = page.joined_text()
    assert "not for clinical use" in page_text and str(linear_run) in page_text
    assert all(label in page_text for label in LABELS)
    macro = json.loads((linear_run / "metrics.json").read_text())["test"]["macro"]["auroc"]
    value, ci = f"{macro['value']:.3f}", f"{macro['ci'][0]:.3f} to {macro['ci'][1]:.3f}"
    assert f"**{value} ({ci})**" in text and value in page_text and f"95 % CI {ci}" in page_text
    for line in text.splitlines():  # every per-label row of report.md, cell by cell, is in the page
        if line.startswith("| ") and line.split(" | ")[0][2:] in LABELS:
            assert all(cell.strip() in page_text for cell in line.strip("| ").split(" | "))
    with pytest.raises(ValueError, match=r"metrics\.json"):
        write_report(tmp_path, tmp_path / "nothing")


def test_attention_examples_are_single_label_positives_one_per_label(linear_run: Path) -> None:
    from training.downstream.artifact import load_predictions

    predictions = load_predictions(linear_run)
    chosen = pick_examples(predictions, ["Cardiomegaly", "No Finding", "Edema"], count=4)
    positives = (predictions.labels.targets == 1) & predictions.labels.mask
    for index, label in chosen:
        assert positives[index].sum() == 1 and positives[index, LABELS.index(label)]
    assert [label for _, label in chosen[:2]] != [chosen[0][1]] * 2
    assert np.all([0 <= i < len(predictions.paths) for i, _ in chosen])


def test_report_html_renders_in_chromium_with_every_figure(
    linear_run: Path, tmp_path: Path, chromium: Any
) -> None:
    out = tmp_path / "report"
    write_report(linear_run, out, attention_count=3)
    page = chromium.new_page(viewport={"width": 1100, "height": 900})
    problems: list[str] = []

    def console(message: Any) -> None:
        if message.type == "error":
            problems.append(message.text)

    def request(sent: Any) -> None:
        if not sent.url.startswith(("file:", "data:")):
            problems.append(sent.url)

    page.on("console", console)
    page.on("request", request)
    page.goto((out / "report.html").as_uri())
    sizes = page.eval_on_selector_all("img", "images => images.map(i => [i.complete, i.naturalWidth])")
    page.screenshot(path=str(screenshot_path("report.png")), full_page=True)
    page.close()
    assert len(sizes) == 6 and all(complete and width > 300 for complete, width in sizes)
    assert problems == []


def test_report_draws_the_encoders_pretraining_monitor(linear_run: Path, tmp_path: Path) -> None:
    import shutil

    from training.monitor import MONITOR_COLUMNS
    from training.pretrain import EPOCH_COLUMNS
    from training.run_folder import CsvLog

    pretraining = tmp_path / "pretrain"
    (pretraining / "checkpoints").mkdir(parents=True)
    (pretraining / "checkpoints" / "encoder.safetensors").write_bytes(b"")
    monitor, epochs = (
        CsvLog(pretraining / "monitor.csv", MONITOR_COLUMNS),
        CsvLog(pretraining / "metrics.csv", EPOCH_COLUMNS),
    )
    for epoch in range(4):
        if epoch:
            epochs.append({"epoch": epoch, "loss": 1.0 - 0.1 * epoch})
        status = "ok" if epoch < 3 else "not learning: test"
        monitor.append(
            {"epoch": epoch, "probe_auroc": 0.5 + 0.05 * epoch, "probe_labels": 3, "embedding_std": 0.4,
             "prototypes_used": 10 + epoch, "target_max": "" if epoch == 0 else 0.2, "status": status}
        )  # fmt: skip
    run = tmp_path / "linear"
    shutil.copytree(linear_run, run)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["encoder"]["path"] = str(pretraining / "checkpoints" / "encoder.safetensors")
    (run / "metrics.json").write_text(json.dumps(metrics))
    write_report(run, tmp_path / "report", attention_count=0)
    with Image.open(tmp_path / "report" / "pretraining_monitor.png") as image:
        assert image.size[0] > 600
    text = (tmp_path / "report" / "report.md").read_text()
    assert "](pretraining_monitor.png)" in text and "Monitor verdict at the end: not learning: test" in text
    # a run whose encoder's pretraining folder is not at hand has no such figure
    write_report(linear_run, tmp_path / "plain", attention_count=0)
    assert not (tmp_path / "plain" / "pretraining_monitor.png").exists()
