"""Label policy: uncertain labels, blanks (masked, or 0 as the paper), estimability and its reasons.

The paper's policy against a MIMIC-like fixture is in test_paper_protocol_downstream.py."""

from __future__ import annotations

import numpy as np
import pytest

from cxrmsn.labels import LABELS, NUM_LABELS
from training.data.manifest import ManifestRow
from training.downstream.labels import (
    annotated_labels,
    estimable,
    label_counts,
    label_matrix,
    not_estimable_reason,
)

ATEL, CARDIO, FRACTURE = LABELS.index("Atelectasis"), LABELS.index("Cardiomegaly"), LABELS.index("Fracture")


def row(dataset: str, values: dict[int, float | None], patient: str = "p") -> ManifestRow:
    labels: list[float | None] = [None] * NUM_LABELS
    for index, value in values.items():
        labels[index] = value
    return ManifestRow(path="x.png", patient_id=patient, split="train", dataset=dataset, labels=tuple(labels))


ROWS = [
    row("mimic", {ATEL: 1.0, CARDIO: -1.0}),
    row("mimic", {ATEL: 0.0, CARDIO: None}),
    row("nih", {ATEL: -1.0, CARDIO: 0.0}),
]


@pytest.mark.parametrize(
    ("policy", "target", "counted"), [("zeros", 0.0, True), ("ones", 1.0, True), ("ignore", 0.0, False)]
)
def test_uncertain_policy(policy: str, target: float, counted: bool) -> None:
    matrix = label_matrix(ROWS, uncertain=policy)
    assert matrix.targets[0, CARDIO] == target and matrix.mask[0, CARDIO] == counted
    assert matrix.targets[2, ATEL] == target and matrix.mask[2, ATEL] == counted
    assert matrix.targets[0, ATEL] == 1 and matrix.mask[0, ATEL]  # certain values are untouched


def test_masked_blanks_are_never_negative() -> None:
    matrix = label_matrix(ROWS, blank="masked")
    assert not matrix.mask[1, CARDIO] and not matrix.mask[:, FRACTURE].any()
    counts = label_counts(matrix)
    assert counts["Fracture"] == {"counted": 0, "positives": 0, "negatives": 0}
    assert counts["Cardiomegaly"] == {"counted": 2, "positives": 0, "negatives": 2}  # -1 -> 0 and 0


def test_blank_zero_datasets_only_for_labels_that_data_set_annotates() -> None:
    matrix = label_matrix(ROWS, blank="masked", blank_zero_datasets=("mimic",))
    assert matrix.mask[1, CARDIO] and matrix.targets[1, CARDIO] == 0  # mimic annotates Cardiomegaly
    assert not matrix.mask[:2, FRACTURE].any()  # mimic never annotates Fracture: still masked
    assert not matrix.mask[2, FRACTURE]  # nih is not listed
    assert annotated_labels(ROWS) == {"mimic": {ATEL, CARDIO}, "nih": {ATEL, CARDIO}}


def test_estimable_and_reasons() -> None:
    matrix = label_matrix(ROWS)
    ok = estimable(matrix)
    assert ok[ATEL] and not ok[CARDIO] and not ok[FRACTURE]
    counts = label_counts(matrix)
    assert not_estimable_reason(counts["Atelectasis"], "test") is None
    assert not_estimable_reason(counts["Cardiomegaly"], "test") == "no positives in the test split"
    assert not_estimable_reason(counts["Fracture"], "test") == "not annotated in the test split"
    ones = label_counts(label_matrix(ROWS[:1], uncertain="ones"))
    assert not_estimable_reason(ones["Cardiomegaly"], "valid") == "no negatives in the valid split"


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="uncertain policy"):
        label_matrix(ROWS, uncertain="maybe")
    with pytest.raises(ValueError, match="blank policy"):
        label_matrix(ROWS, blank="maybe")
    with pytest.raises(ValueError, match="only applies with blank=masked"):
        label_matrix(ROWS, blank="zeros", blank_zero_datasets=("mimic",))
    assert np.all(label_matrix([]).targets.shape == (0, NUM_LABELS))
