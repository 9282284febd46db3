"""The C-STORE listener in this process, driven by a real pynetdicom SCU (no PACS needed):
what is predicted and queued, what is skipped with success, what is refused, and the
calling AE allow-list. The round trip through a real PACS is in test_pacs_orthanc.py."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serving import decode_pool
from serving.pacs.listener import CANNOT_UNDERSTAND, SUCCESS, Listener, skip_reason
from serving.pacs.outbox import Outbox, source_digest
from serving.predictor import Predictor, load_predictor
from tests.serving.orthanc import (
    PATIENT_ID_MARKER,
    PATIENT_NAME_MARKER,
    chest_instance,
    corrupt_instance,
    other_modality_instance,
    sr_probabilities,
    store_scu,
    to_bytes,
)


@pytest.fixture(scope="module")
def predictor(model_repository: Path) -> Predictor:
    return load_predictor(model_repository, fallback="none")


@pytest.fixture
def listener(predictor: Predictor, tmp_path: Path) -> Iterator[Listener]:
    preprocessing = predictor.preprocessing

    def prepare(data: bytes) -> tuple[Any, Any]:
        return decode_pool.prepare(None, data, preprocessing, read_source=True)

    running = Listener(
        predictor,
        Outbox(tmp_path / "outbox"),
        prepare,
        host="127.0.0.1",
        port=0,
        allowed_callers=["TESTSCU"],
    )
    running.start()
    yield running
    running.stop()


def queued(outbox: Outbox) -> list[str]:
    return [item.key for item in outbox.items()]


def expected_probabilities(predictor: Predictor, data: bytes) -> dict[str, float]:
    import numpy as np

    prepared = predictor.prepare(data)
    probabilities, attention = predictor.infer(np.stack([prepared.model_input]))
    result = predictor.result(prepared, probabilities[0], attention[0], overlay=False)
    return dict(result["probabilities"])


def test_a_chest_film_is_predicted_and_its_sr_and_sc_queued_once(
    listener: Listener, predictor: Predictor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    dataset = chest_instance(PatientName=PATIENT_NAME_MARKER, PatientID=PATIENT_ID_MARKER)
    assert store_scu(listener.port, [dataset, dataset]) == [SUCCESS, SUCCESS]  # the second: a duplicate
    digest = source_digest(dataset.SOPInstanceUID)
    assert queued(listener.outbox) == [f"{digest}.sr", f"{digest}.sc"]
    assert (listener.stats.queued, listener.stats.duplicates) == (1, 1)
    report = (listener.outbox.pending / f"{digest}.sr.dcm").read_bytes()
    expected = expected_probabilities(predictor, to_bytes(dataset))
    assert sr_probabilities(report) == pytest.approx(expected, abs=1e-6)
    assert "already processed" in caplog.text
    for marker in (PATIENT_NAME_MARKER, PATIENT_ID_MARKER, "ZZMARKER", dataset.SOPInstanceUID):
        assert marker not in caplog.text


def test_other_modalities_and_lateral_views_are_accepted_and_skipped(
    listener: Listener, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    ct = other_modality_instance()
    lateral = chest_instance(ViewPosition="LL")
    hand = chest_instance(BodyPartExamined="HAND")
    assert store_scu(listener.port, [ct, lateral, hand]) == [SUCCESS, SUCCESS, SUCCESS]
    assert queued(listener.outbox) == []
    assert listener.stats.skipped == 3
    assert "not a chest radiograph: modality CT" in caplog.text
    assert "a lateral view (ViewPosition LL)" in caplog.text
    assert "body part HAND is not CHEST" in caplog.text


def test_a_corrupt_file_is_refused_and_nothing_is_queued(listener: Listener) -> None:
    dataset = corrupt_instance()
    assert store_scu(listener.port, [dataset]) == [CANNOT_UNDERSTAND]
    assert queued(listener.outbox) == []
    assert not listener.outbox.seen(source_digest(dataset.SOPInstanceUID))  # a fixed file may come later
    assert listener.stats.refused == 1


def test_callers_outside_the_allow_list_are_rejected(listener: Listener) -> None:
    assert store_scu(listener.port, [chest_instance()], calling_ae="STRANGER") == [None]
    assert queued(listener.outbox) == []


def test_skip_reasons() -> None:
    assert skip_reason(chest_instance()) is None
    assert skip_reason(chest_instance(ViewPosition="AP")) is None
    assert (
        skip_reason(chest_instance(Manufacturer="cxr-msn")) == "a cxr-msn result (its own output sent back)"
    )
    capture = chest_instance(SOPClassUID="1.2.840.10008.5.1.4.1.1.7", Modality="OT")
    assert skip_reason(capture) is None  # a Secondary Capture of a chest film (BodyPartExamined CHEST)
    del capture.BodyPartExamined
    assert "Secondary Capture" in str(skip_reason(capture))
