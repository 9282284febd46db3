"""``serving.predictor.Predictor`` on variants of the test repository's validity gate.

The HTTP tests (test_service.py) cover a gate that was evaluated; these cover the two other
states, through the same Predictor the service and ``cxr-msn predict`` use.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cxrmsn.labels import LABELS
from serving.predictor import Predictor, load_predictor
from serving.schemas import ModelCard
from tests.serving.repository import NOT_VALIDATED, TRAINED

EVERY_LABEL_HIGH = dict.fromkeys(LABELS, 0.99)


def predictor_with(root: Path, repository: Path, change: Callable[[dict[str, Any]], None]) -> Predictor:
    """A copy of ``repository`` whose manifest.json ``change`` edited (the manifest is not hashed)."""
    copy = root / "model_repository"
    shutil.copytree(repository, copy)
    values = json.loads((copy / "manifest.json").read_text())
    change(values)
    (copy / "manifest.json").write_text(json.dumps(values))
    return load_predictor(copy, backend="onnxruntime", variant=None)


def test_a_repository_exported_before_the_gate_marks_no_label(tmp_path: Path, model_repository: Path) -> None:
    predictor = predictor_with(tmp_path, model_repository, lambda values: values.pop("validity_gate"))
    assert predictor.not_validated_labels == []
    assert predictor.positive_labels(EVERY_LABEL_HIGH) == ["Cardiomegaly", "No Finding"]
    assert not any(warning.startswith("not validated") for warning in predictor.model_warnings())
    card = predictor.model_card()
    assert card["not_validated_labels"] == [] and card["validity_gate"]["status"] == "absent"
    assert "before the validity gate" in card["validity_gate"]["reason"]
    ModelCard.model_validate(card)


def test_a_gate_that_could_not_be_evaluated_holds_back_every_trained_label(
    tmp_path: Path, model_repository: Path
) -> None:
    def not_evaluated(values: dict[str, Any]) -> None:
        values["validity_gate"].update(
            status="not_evaluated", reason="no per-label validation AUROC CIs", not_validated_labels=TRAINED
        )

    predictor = predictor_with(tmp_path, model_repository, not_evaluated)
    assert predictor.not_validated_labels == TRAINED  # label order
    assert predictor.positive_labels(EVERY_LABEL_HIGH) == []
    [warning] = [w for w in predictor.model_warnings() if w.startswith("not validated")]
    assert "no validation to check: no per-label validation AUROC CIs" in warning
    card = ModelCard.model_validate(predictor.model_card())
    assert card.validity_gate.status == "not_evaluated" and card.not_validated_labels == TRAINED


def test_the_evaluated_gate_only_holds_back_the_labels_it_failed(model_repository: Path) -> None:
    predictor = load_predictor(model_repository, backend="onnxruntime", variant=None)
    assert predictor.not_validated_labels == NOT_VALIDATED
    assert predictor.positive_labels(EVERY_LABEL_HIGH) == ["Cardiomegaly"]
