"""A DICOM C-STORE listener (pynetdicom): chest films in, Structured Report and heatmap out.

Each received instance goes through the prediction path of ``POST /predict_dicom`` (the
decode pool or the core decoder, the Predictor, ``serving.dicom_output``); its SR and SC
are written to the outbox (``serving.pacs.outbox``) before the C-STORE is answered, and a
sender thread stores them to the destination with C-STORE, retrying with back-off.

Answers (DIMSE C-STORE status):

* 0x0000 Success: results queued; or skipped (not a chest radiograph, a lateral view, one of
  our own outputs, an instance already processed). A sender must not retry those.
* 0xC000 Cannot understand: the pixel data cannot be decoded (corrupt, unsupported); nothing
  is queued. Retrying will not help.
* 0xA700 Out of resources: decoding ran past its deadline or memory limit, the model failed,
  or the outbox could not be written; nothing is queued. A later retry may succeed.

Logs name an instance by a digest of its SOPInstanceUID, never by patient attributes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    ComputedRadiographyImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    EnhancedSRStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
)
from pydicom.uid import JPEGLossless as JPEGLosslessP14
from pynetdicom import AE, StoragePresentationContexts, evt

from cxrmsn.errors import DecodeError
from cxrmsn.ood import RADIOGRAPH_MODALITIES
from serving.pacs.outbox import DeliveryError, Item, Outbox, source_digest

LOGGER = logging.getLogger("cxr_msn.pacs.listener")

#: What the decoder reads (cxrmsn.imaging): uncompressed, deflated, JPEG, JPEG-LS, JPEG 2000, RLE.
DECODABLE_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessP14,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]
CHEST_CLASSES: dict[str, str] = {
    ComputedRadiographyImageStorage: "CR",
    DigitalXRayImageStorageForPresentation: "DX",
    DigitalXRayImageStorageForProcessing: "DX",
    SecondaryCaptureImageStorage: "SC",
}
LATERAL_VIEWS = {"LL", "RL", "LAT", "LATERAL"}
OWN_MANUFACTURER = "cxr-msn"  # serving.dicom_output.MANUFACTURER: our own results coming back

SUCCESS = 0x0000
CANNOT_UNDERSTAND = 0xC000
OUT_OF_RESOURCES = 0xA700
VERIFICATION = "1.2.840.10008.1.1"  # C-ECHO
#: Status codes a storage SCP answers for an instance it kept (success and warnings).
STORED = {0x0000, 0xB000, 0xB006, 0xB007}
#: Decoder errors that are about this process's limits, not about the file.
RESOURCE_ERRORS = {"decode_timeout", "decode_too_large", "decode_unavailable"}


@dataclass(frozen=True)
class Destination:
    host: str
    port: int
    ae_title: str

    @classmethod
    def parse(cls, text: str) -> Destination:
        """``HOST:PORT:AET`` (an IPv6 host in brackets: ``[::1]:104:PACS``)."""
        host, _, rest = text.rpartition(":")
        host, _, port = host.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or not rest or len(rest) > 16:
            raise ValueError(
                f"destination must be HOST:PORT:AET (AE title up to 16 characters), got {text!r}"
            )
        return cls(host, int(port), rest)

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class CStoreSender:
    """Stores outbox items at a destination over one association, reopened when needed."""

    def __init__(self, destination: Destination, calling_ae: str, timeout_s: float = 30.0) -> None:
        self.destination = destination
        self.ae = AE(ae_title=calling_ae)
        for sop_class in (EnhancedSRStorage, SecondaryCaptureImageStorage):
            self.ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = timeout_s
        self._association: Any = None

    def __call__(self, data: bytes, item: Item) -> None:
        dataset = pydicom.dcmread(io.BytesIO(data))
        association = self._associate()
        try:
            status = association.send_c_store(dataset)
        except Exception as error:
            self.close()
            raise DeliveryError(f"C-STORE to {self.destination} failed ({type(error).__name__})") from None
        code = int(status.Status) if status is not None and "Status" in status else None
        if code is None:
            self.close()
            raise DeliveryError(
                f"no C-STORE response from {self.destination} (association lost or timed out)"
            )
        if code not in STORED:
            raise DeliveryError(f"{self.destination} answered C-STORE status 0x{code:04X}")

    def _associate(self) -> Any:
        if self._association is not None and self._association.is_established:
            return self._association
        dest = self.destination
        association = self.ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
        if not association.is_established:
            raise DeliveryError(f"no association with {dest} (unreachable, or the association was rejected)")
        self._association = association
        return association

    def close(self) -> None:
        if self._association is not None:
            with contextlib.suppress(Exception):
                if self._association.is_established:
                    self._association.release()
            self._association = None


@dataclass
class ListenerStats:
    received: int = 0
    queued: int = 0
    skipped: int = 0
    duplicates: int = 0
    refused: int = 0


class Listener:
    """The C-STORE SCP and its sender thread.

    ``prepare(data) -> (PreparedImage, source header)`` decodes (the decode pool or the core
    decoder); ``predictor`` is a ``serving.predictor.Predictor``.
    """

    def __init__(
        self,
        predictor: Any,
        outbox: Outbox,
        prepare: Callable[[bytes], tuple[Any, Any]],
        *,
        ae_title: str = "CXRMSN",
        host: str = "0.0.0.0",
        port: int = 11112,
        allowed_callers: Sequence[str] = (),
        send: Callable[[bytes, Item], None] | None = None,
        close_sender: Callable[[], None] | None = None,
    ) -> None:
        self.predictor = predictor
        self.outbox = outbox
        self.prepare = prepare
        self.ae_title, self.host, self.port = ae_title, host, port
        self.allowed_callers = [caller.strip() for caller in allowed_callers if caller.strip()]
        self.send = send
        self.close_sender = close_sender
        self.stats = ListenerStats()
        self._infer_lock = threading.Lock()
        self._in_flight: set[str] = set()
        self._in_flight_lock = threading.Lock()
        self._stop = threading.Event()
        self._server: Any = None
        self._sender_thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        # pynetdicom's INFO and DEBUG output names instance UIDs and, at DEBUG, dumps data set
        # elements (patient attributes): never below WARNING, whatever the root level.
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        ae = AE(ae_title=self.ae_title)
        for context in StoragePresentationContexts:  # others are accepted, then skipped
            if context.abstract_syntax is not None:
                ae.add_supported_context(context.abstract_syntax, [*DECODABLE_SYNTAXES, ExplicitVRBigEndian])
        ae.add_supported_context(VERIFICATION)
        if self.allowed_callers:
            ae.require_calling_aet = self.allowed_callers
        ae.maximum_associations = 16
        handlers: list[Any] = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_ACCEPTED, self._on_accepted)]
        self._server = ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
        self.port = int(self._server.server_address[1])
        self.start_sender()
        callers = ", ".join(self.allowed_callers) or "any"
        LOGGER.info(
            "listening as %s on %s:%d (calling AE titles: %s)", self.ae_title, self.host, self.port, callers
        )

    def start_sender(self) -> None:
        """The thread that delivers the outbox (started by ``start``; alone for STOW-RS)."""
        if self.send is not None and self._sender_thread is None:
            self._sender_thread = threading.Thread(target=self._send_loop, name="pacs-outbox", daemon=True)
            self._sender_thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.outbox.changed.set()
        if self._server is not None:
            self._server.shutdown()
        if self._sender_thread is not None:
            self._sender_thread.join(timeout=30)
        if self.close_sender is not None:
            self.close_sender()

    def _send_loop(self) -> None:
        assert self.send is not None
        while not self._stop.is_set():
            self.outbox.changed.clear()
            try:
                counts = self.outbox.deliver_due(self.send)
                if counts["sent"]:
                    LOGGER.info("outbox: %d result(s) stored at the destination", counts["sent"])
            except Exception as error:  # a disk error: keep the loop alive, try again later
                LOGGER.error("outbox delivery round failed: %s", type(error).__name__)
            finally:
                if self.close_sender is not None:
                    self.close_sender()
            delay = self.outbox.next_due_in()
            self.outbox.changed.wait(timeout=60.0 if delay is None else min(60.0, max(0.05, delay)))

    # -- C-STORE -----------------------------------------------------------------------------

    def _on_accepted(self, event: Any) -> None:
        requestor = event.assoc.requestor
        LOGGER.info("association from %s accepted", str(requestor.ae_title).strip())

    def _on_store(self, event: Any) -> int:
        self.stats.received += 1
        try:
            data = event.encoded_dataset()
        except Exception as error:
            LOGGER.warning("an instance was refused: its data set cannot be read (%s)", type(error).__name__)
            self.stats.refused += 1
            return CANNOT_UNDERSTAND
        return self.process(data)

    def process(self, data: bytes) -> int:
        """Handle one Part 10 file: the C-STORE status to answer."""
        try:
            header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            uid = str(header.SOPInstanceUID)
        except Exception as error:
            LOGGER.warning("an instance was refused: its header is unreadable (%s)", type(error).__name__)
            self.stats.refused += 1
            return CANNOT_UNDERSTAND
        name = f"instance {source_digest(uid)}"
        reason = skip_reason(header)
        if reason is not None:
            LOGGER.info("%s skipped: %s", name, reason)
            self.stats.skipped += 1
            return SUCCESS
        digest = source_digest(uid)
        with self._in_flight_lock:
            duplicate = digest in self._in_flight or self.outbox.seen(digest)
            if not duplicate:
                self._in_flight.add(digest)
        if duplicate:
            LOGGER.info("%s skipped: already processed (the same SOPInstanceUID was received before)", name)
            self.stats.duplicates += 1
            return SUCCESS
        try:
            return self._predict_and_queue(data, digest, name)
        finally:
            with self._in_flight_lock:
                self._in_flight.discard(digest)

    def _predict_and_queue(self, data: bytes, digest: str, name: str) -> int:
        try:
            prepared, source = self.prepare(data)
        except DecodeError as error:
            status = OUT_OF_RESOURCES if error.code in RESOURCE_ERRORS else CANNOT_UNDERSTAND
            LOGGER.warning("%s refused (0x%04X): %s: %s", name, status, error.code, error.detail)
            self.stats.refused += 1
            return status
        try:
            with self._infer_lock:
                probabilities, attention, scores = self.predictor.infer_scored(
                    np.stack([prepared.model_input])
                )
            # The out-of-distribution guard: NotAChestRadiographError (a DecodeError) refuses it.
            verdict = self.predictor.screen(prepared, None if scores is None else scores[0])
            result = self.predictor.result(
                prepared, probabilities[0], attention[0], overlay=False, ood=verdict
            )
            parts = self.predictor.dicom_outputs(prepared, attention[0], result, source)
        except DecodeError as error:  # DicomOutputError (highdicom cannot build from this header), or
            # NotAChestRadiographError
            LOGGER.warning("%s refused (0x%04X): %s: %s", name, CANNOT_UNDERSTAND, error.code, error.detail)
            self.stats.refused += 1
            return CANNOT_UNDERSTAND
        except Exception as error:
            LOGGER.error(
                "%s refused (0x%04X): the model failed (%s)", name, OUT_OF_RESOURCES, type(error).__name__
            )
            self.stats.refused += 1
            return OUT_OF_RESOURCES
        try:
            for part in ("sr", "sc"):
                self.outbox.enqueue(f"{digest}.{part}", parts[part])
            self.outbox.mark_seen(digest)
        except OSError as error:
            LOGGER.error(
                "%s refused (0x%04X): the outbox cannot be written (%s)",
                name,
                OUT_OF_RESOURCES,
                type(error).__name__,
            )
            self.stats.refused += 1
            return OUT_OF_RESOURCES
        LOGGER.info("%s: SR and heatmap SC queued for the destination", name)
        self.stats.queued += 1
        return SUCCESS


def skip_reason(header: Dataset) -> str | None:
    """Why an instance gets no result (None: it does). Names only coded attributes, never patient data."""
    sop_class = str(header.get("SOPClassUID", ""))
    kind = CHEST_CLASSES.get(sop_class)
    modality = str(header.get("Modality", "") or "").upper()
    body_part = str(header.get("BodyPartExamined", "") or "").strip().upper()
    if str(header.get("Manufacturer", "") or "").strip() == OWN_MANUFACTURER:
        return "a cxr-msn result (its own output sent back)"
    if kind is None:
        known = pydicom.uid.UID(sop_class).name if sop_class else "none"
        return f"not a chest radiograph: modality {_coded(modality)}, SOP class {_coded(known)}"
    if kind == "SC" and body_part != "CHEST" and modality not in RADIOGRAPH_MODALITIES:
        return "a Secondary Capture that is not marked as a chest film (BodyPartExamined CHEST)"
    if kind != "SC" and modality and modality not in RADIOGRAPH_MODALITIES:
        return f"modality {_coded(modality)} is not CR, DX or DR"
    if body_part and body_part != "CHEST":
        return f"body part {_coded(body_part)} is not CHEST"
    view = str(header.get("ViewPosition", "") or "").strip().upper()
    if view in LATERAL_VIEWS:
        return f"a lateral view (ViewPosition {view}); the model reads frontal films only"
    return None


def _coded(value: str) -> str:
    """A coded value for the log, cut short (a malformed file could put anything there)."""
    text = "".join(ch for ch in value if ch.isprintable())[:40]
    return text or "none"
