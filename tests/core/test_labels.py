import pytest

from cxrmsn.labels import LABELS, NUM_LABELS, check_labels


def test_fourteen_chexpert_labels_in_mimic_order() -> None:
    assert NUM_LABELS == 14
    assert LABELS[0] == "Atelectasis"
    assert LABELS[4] == "Enlarged Cardiomediastinum"
    assert LABELS[-1] == "No Finding"
    assert len(set(LABELS)) == 14


def test_check_labels_rejects_another_order() -> None:
    check_labels(list(LABELS), source="x")
    with pytest.raises(ValueError, match="in this order"):
        check_labels(list(reversed(LABELS)), source="x")
