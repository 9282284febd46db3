"""The BentoML service: DICOM, PNG or JPEG in; 14 probabilities and an attention map out.

Configuration comes from the environment (see ``serving.config`` and the README):
``MODEL_REPOSITORY`` names the model repository to serve. Importing this module
does no work on the model: the repository is checked once before any worker starts (by
``cxr-msn serve``, or by ``check_repository`` below under a plain ``bentoml serve``), and
the worker loads the model once (``Predictor``, which checks its size and sha256 again).
Not for clinical use unless validated.
"""

from __future__ import annotations

import io
import logging
import os
import zipfile
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import bentoml
from bentoml.validators import ContentType
from fastapi import FastAPI
from pydantic import Field
from starlette.responses import Response

from cxrmsn.errors import ApiError
from cxrmsn.ood import Verdict
from serving.api_errors import error_response, with_error_responses
from serving.batching import MicroBatcher
from serving.config import ServingConfig
from serving.metrics import ServiceMetrics
from serving.middleware import (
    BOOL_VALUES,
    REQUEST_TIMEOUT_SECONDS,
    DocsPageMiddleware,
    FormShape,
    RequestShapeMiddleware,
    UploadLimitMiddleware,
    UploadSettings,
    WorkLimitMiddleware,
    withhold_framework_error_details,
)
from serving.predictor import Predictor, PreparedImage, variant_fallback_from_env
from serving.preflight import CHECKED_ENV, StartupRefusedError, startup_check
from serving.schemas import BatchItem, BatchResponse, ErrorResponse, ModelCard, PredictResponse

LOGGER = logging.getLogger("cxr_msn.serving")
CONFIG = ServingConfig.from_env()
VARIANT_FALLBACK = variant_fallback_from_env()

model_api = FastAPI(title="cxr-msn model information", version="1")
# The /ui page's three files, read once: (content, media type) by name.
UI_MEDIA_TYPES = {"index.html": "text/html", "ui.js": "text/javascript", "ui.css": "text/css"}
UI_FILES = {
    name: ((Path(__file__).with_name("ui") / name).read_bytes(), media_type)
    for name, media_type in UI_MEDIA_TYPES.items()
}
# The page loads nothing from other origins (the service usually runs offline).
UI_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
DICOM_FILE_NAMES = {"sr": "cxr-msn-report-sr.dcm", "sc": "cxr-msn-heatmap-sc.dcm"}
# prepared, probabilities, attention, DICOM header, the out-of-distribution guard's verdict
ModelOutcome = tuple[PreparedImage, Any, Any, Any, Verdict]


@bentoml.service(
    name="cxr_msn",
    workers=1,
    # No max_concurrency here: BentoML would count requests from their first byte, so slow
    # uploads could hold every slot. WorkLimitMiddleware counts them once their body is in.
    traffic={"timeout": REQUEST_TIMEOUT_SECONDS},
)
@bentoml.asgi_app(model_api)
class CXRService:
    """Chest X-ray classification with a multimodal-MSN ViT (research use only)."""

    @bentoml.on_deployment  # a staticmethod, run in bentoml serve's own process
    def check_repository() -> None:
        """Before any worker starts (``bentoml serve``'s own process): a missing or tampered
        model, or a variant that fails its self-check, stops the server with one line instead
        of a worker restart loop. ``cxr-msn serve`` has made this check already."""
        if os.environ.get(CHECKED_ENV) == "1":
            return
        try:
            LOGGER.info("%s", startup_check(CONFIG, VARIANT_FALLBACK))
        except StartupRefusedError as error:
            raise SystemExit(f"cxr-msn: {error}") from None

    def __init__(self) -> None:
        self.predictor = Predictor(CONFIG, fallback=VARIANT_FALLBACK)
        self.metrics = ServiceMetrics()
        self.batcher = MicroBatcher(self.predictor.infer_scored, max_batch_size=CONFIG.max_batch_size)
        self.batcher.on_batch = self.metrics.observe_batch
        # Work in threads (reading uploads, results, DICOM output); bound them (anyio's default
        # pool has 40) so that memory and CPU stay proportional to the cores, not to the requests.
        self.decode_slots = anyio.CapacityLimiter(max(2, os.cpu_count() or 2))
        # Decoding runs in worker processes, each upload within a deadline and a memory limit
        # (serving.decode_pool); CXR_MSN_DECODE_WORKERS=0 decodes in the threads above instead.
        from serving.decode_pool import DecodePool

        self.decode_pool: DecodePool | None = None
        if CONFIG.decode_workers:
            self.decode_pool = DecodePool(
                CONFIG.decode_workers,
                deadline_s=CONFIG.decode_deadline_s,
                memory_mib=CONFIG.decode_memory_mib,
            )
            self.decode_pool.wait_ready()  # a worker that cannot start stops the service here
        # Uploads wait here for a free decode worker, holding no thread while they wait.
        self.decode_workers = anyio.CapacityLimiter(max(1, CONFIG.decode_workers))
        LOGGER.info(
            "serving %s %s (%s, sha256 %s...) with %s",
            self.predictor.manifest.name,
            self.predictor.variant,
            self.predictor.manifest.architecture,
            self.predictor.model_file.sha256[:12],
            self.predictor.backend.description,
        )

    @bentoml.api(route="/predict")
    async def predict(
        self,
        file: Annotated[Path, Field(description="a chest X-ray: DICOM, PNG or JPEG (detected by content)")],
        overlay: Annotated[bool, Field(description="also return the attention heatmap as a PNG")] = False,
        image: Annotated[bool, Field(description="also return the model's view of the image (PNG)")] = False,
    ) -> PredictResponse:
        """Classify one chest X-ray. Errors: JSON {"error": CODE, "detail": MESSAGE} with 4xx; an
        image the out-of-distribution guard does not take for a chest radiograph is 422
        not_a_chest_radiograph (CXR_MSN_OOD=warn: 200 with a warning)."""
        try:
            return await self._predict_one(file, overlay, image)
        except ApiError as error:
            return self._refusal(error)

    @bentoml.api(route="/predict_batch")
    async def predict_batch(
        self,
        files: Annotated[list[Path], Field(description="several chest X-rays, each DICOM, PNG or JPEG")],
        overlay: Annotated[bool, Field(description="also return heatmap PNGs")] = False,
    ) -> BatchResponse:
        """Classify several files; one result or one error per file, in order."""
        if len(files) > CONFIG.max_files_per_batch:
            detail = f"{len(files)} files sent; at most {CONFIG.max_files_per_batch} per request"
            return self._refusal(ApiError(detail, code="too_many_files"))
        outcomes = await _gather([self._predict_or_refuse(path, overlay) for path in files])
        return BatchResponse(results=[_batch_item(index, outcome) for index, outcome in enumerate(outcomes)])

    @bentoml.api(route="/predict_dicom")
    async def predict_dicom(
        self,
        file: Annotated[Path, Field(description="a chest X-ray DICOM with its study, series and SOP UIDs")],
        output: Annotated[
            Literal["sr", "sc", "both"],
            Field(description="sr: Structured Report; sc: heatmap Secondary Capture; both: a ZIP of the two"),
        ] = "sr",
    ) -> Annotated[Path, ContentType("application/dicom")]:
        """Classify one DICOM and answer in DICOM, for PACS: a Structured Report of the 14 findings
        (coded, with probabilities, the model's identity and references to the source study,
        series and instance) and/or a Secondary Capture of the attention heatmap. Both keep the
        source's patient and study modules so a PACS files them with the study."""
        try:
            outcome = await self._run_model(file, read_source=True)
            parts = await anyio.to_thread.run_sync(
                lambda: self._dicom_parts(outcome, output), limiter=self.decode_slots
            )
        except ApiError as error:  # the upload's, or a header highdicom cannot make an SR or SC of
            return self._refusal(error)
        return passthrough(dicom_response(parts))

    def _dicom_parts(self, outcome: ModelOutcome, output: str) -> dict[str, bytes]:
        prepared, probabilities, attention, source, verdict = outcome
        result = self.predictor.result(prepared, probabilities, attention, overlay=False, ood=verdict)
        parts = ("sr", "sc") if output == "both" else (output,)
        encoded = self.predictor.dicom_outputs(prepared, attention, result, source, parts)
        return {DICOM_FILE_NAMES[part]: content for part, content in encoded.items()}

    def _refusal(self, error: ApiError) -> Any:
        """The one way an API answers an error: counted by its code, then its JSON response."""
        self.metrics.count_error(error.code)
        return passthrough(error_response(error))

    async def _run_model(self, path: Path, *, read_source: bool = False) -> ModelOutcome:
        """Decode, preprocess, infer and screen one upload. ApiError: the decoder's refusal,
        ``inference_failed``, or the out-of-distribution guard's ``not_a_chest_radiograph``."""
        from serving import decode_pool

        data = await anyio.to_thread.run_sync(path.read_bytes, limiter=self.decode_slots)
        pool, preprocessing = self.decode_pool, self.predictor.preprocessing
        # In a worker process (deadline, memory limit), or with CXR_MSN_DECODE_WORKERS=0 in this
        # process, unbounded; each waits for a free decode worker holding no thread.
        limiter = self.decode_workers if pool is not None else self.decode_slots
        prepared, source = await anyio.to_thread.run_sync(
            lambda: decode_pool.prepare(pool, data, preprocessing, read_source=read_source),
            limiter=limiter,
        )
        self.metrics.count_request(prepared.decoded.info.format)
        try:
            probabilities, attention, score = await self.batcher.infer(prepared.model_input)
        except Exception as error:  # a backend fault: 500, logged without input details
            LOGGER.error("inference failed: %s", type(error).__name__)
            detail = "the model backend failed; see server logs"
            raise ApiError(detail, code="inference_failed") from None
        verdict = self.predictor.screen(prepared, score)  # ApiError: not_a_chest_radiograph
        return prepared, probabilities, attention, source, verdict

    async def _predict_or_refuse(self, path: Path, overlay: bool) -> PredictResponse | ApiError:
        try:
            return await self._predict_one(path, overlay)
        except ApiError as error:
            self.metrics.count_error(error.code)
            return error

    async def _predict_one(self, path: Path, overlay: bool, image: bool = False) -> PredictResponse:
        prepared, probabilities, attention, _, verdict = await self._run_model(path)
        result = await anyio.to_thread.run_sync(
            lambda: self.predictor.result(
                prepared, probabilities, attention, overlay=overlay, image=image, ood=verdict
            ),
            limiter=self.decode_slots,
        )
        return PredictResponse.model_validate(result)


def dicom_response(parts: dict[str, bytes]) -> Response:
    """One DICOM file as application/dicom; several as a ZIP (stored, DICOM barely compresses)."""
    if len(parts) == 1:
        [(name, content)] = parts.items()
        return Response(content, media_type="application/dicom", headers=_attachment(name))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, content in parts.items():
            archive.writestr(name, content)
    return Response(buffer.getvalue(), media_type="application/zip", headers=_attachment("cxr-msn-dicom.zip"))


def _attachment(name: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{name}"'}


def passthrough(response: Response) -> Any:
    """A starlette Response an API returns, which BentoML sends as it is (an error, or DICOM):
    typed Any so that each API keeps its declared result type for the OpenAPI document."""
    return response


def _batch_item(index: int, outcome: PredictResponse | ApiError) -> BatchItem:
    if isinstance(outcome, ApiError):
        return BatchItem(index=index, status=outcome.http_status, error=ErrorResponse(**outcome.to_dict()))
    return BatchItem(index=index, status=200, result=outcome)


async def _gather(coroutines: list[Any]) -> list[Any]:
    results: list[Any] = [None] * len(coroutines)

    async def run(index: int, coroutine: Any) -> None:
        results[index] = await coroutine

    async with anyio.create_task_group() as group:
        for index, coroutine in enumerate(coroutines):
            group.start_soon(run, index, coroutine)
    return results


@model_api.get("/model", response_model=ModelCard, summary="The served model: labels, thresholds, metrics")
async def model_card() -> dict[str, Any]:
    service = bentoml.get_current_service()
    card: dict[str, Any] = service.predictor.model_card()
    return card


@model_api.get("/ui", include_in_schema=False)
@model_api.get("/ui/", include_in_schema=False)
@model_api.get("/ui/{asset}", include_in_schema=False)
async def ui_file(asset: str = "index.html") -> Response:
    if asset not in UI_FILES:
        return error_response(ApiError(f"no such page asset: {asset[:64]}", code="not_found"))
    content, media_type = UI_FILES[asset]
    return Response(content, media_type=media_type, headers=UI_HEADERS)


_service: Any = CXRService  # the bentoml.Service object the decorators made of the class
UPLOAD_SETTINGS = UploadSettings.from_env()
# Middleware added first runs outermost. The docs page needs no body; every body is then
# received whole (bounded in size and time, spooled) before a work slot is taken, and the
# shape check reads the spooled body.
_service.add_asgi_middleware(
    DocsPageMiddleware, openapi=lambda: with_error_responses(_service.openapi_spec.asdict())
)
_service.add_asgi_middleware(
    UploadLimitMiddleware, max_bytes=CONFIG.max_upload_bytes, settings=UPLOAD_SETTINGS
)
_service.add_asgi_middleware(WorkLimitMiddleware, max_concurrency=UPLOAD_SETTINGS.max_concurrency)
# The form of each API route, as the signatures above declare it (test_http_shapes checks
# them against the OpenAPI schema BentoML derives from those signatures).
API_FORMS = {
    "/predict": FormShape("file", {"overlay": BOOL_VALUES, "image": BOOL_VALUES}),
    "/predict_batch": FormShape("files", {"overlay": BOOL_VALUES}, max_files=CONFIG.max_files_per_batch),
    "/predict_dicom": FormShape("file", {"output": frozenset({"sr", "sc", "both"})}),
}
_service.add_asgi_middleware(RequestShapeMiddleware, routes=API_FORMS)
# BentoML logs an API call's exception with its traceback; pydantic's and the OS's messages
# there quote form values and file names. Only the exception's type is logged.
withhold_framework_error_details()


def _register_pacs_routes() -> None:
    """DICOMweb STOW-RS in (``POST /dicomweb/studies``) and ``GET /dicomweb/outbox`` (docs/pacs.md)."""
    from serving.pacs import stow

    stow.register(model_api)


_register_pacs_routes()
