"""The REST service: a FastAPI app built by :func:`create_app`, one model per worker.

Endpoints (``/v1/*`` and ``/metrics`` need an API key; the rest are open):

* ``POST /v1/predict``  an image (multipart field ``file`` or the raw body) -> JSON with the label,
  probabilities, threshold, model version and timing; a segmentation bundle answers with the mask
  (PNG, NIfTI or JSON by ``Accept``); a detection bundle with the boxes in the image's own pixels, their
  scores and the bundle's score threshold (JSON, :mod:`medsight.serve.detections`). ``?preview=1`` adds a
  PNG of the model's input, or of the image the mask or boxes lie on (base64).
* ``POST /v1/explain``  a heatmap PNG (501 until ``medsight.explain`` is installed).
* ``GET /v1/model``     the model card.
* ``POST /v1/feedback`` a clinician's verdict on a prediction (``agree``, the correct ``label``, or a corrected
  ``mask``), for an uploaded input or the ``input_sha256`` of an earlier prediction; stored in the
  feedback folder (:mod:`medsight.feedback`). 404 when the service runs without ``feedback``.
* ``POST /v1/admin/reload`` re-read the registry now and swap in its production model.
* ``GET /healthz``      the process is alive; ``GET /readyz`` the model is loaded (ready or not; the model's
  name and version are on the keyed ``/v1/model``).
* ``GET /metrics``      Prometheus text: requests by endpoint and status, latency, model load time.
* ``GET /``             the web page; ``/static/*`` its script and style; ``/openapi.json``.

With ``registry`` set the service serves that registry's production version and watches
``registry.json`` (its mtime, every ``registry_poll_s``): a promote or rollback loads the new
bundle on a loader thread while requests go on, then swaps the service reference at once;
requests in flight finish on the model they started with.

Every answer carries ``X-Content-Type-Options: nosniff``, every ``/v1/*`` answer ``Cache-Control:
no-store``; every error answers the same JSON body (:class:`~medsight.serve.errors.ErrorBody`). A client
address that fails to authenticate more than ``auth_failures_per_minute`` times a minute is answered
429 with ``Retry-After``; a request with a valid key is never limited.

Uvicorn workers build the app from :func:`app_from_env` (``--workers N``), which reads the
settings from ``$MEDSIGHT_SERVE_SETTINGS``.

Example:
    >>> app = create_app(ServeSettings(bundle=Path("runs/demo/model"), api_keys=("a-long-random-key-1",)))
    >>> # uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path
from time import perf_counter
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from medsight import __version__
from medsight.errors import MedsightError
from medsight.serve.answers import classify_body, finish, mask_file, mask_json, ms, segment_result
from medsight.serve.auth import FailedAuthLimit, check_auth_settings, key_from_headers, key_is_valid
from medsight.serve.detections import detect_body
from medsight.serve.errors import (
    COMMON_ERRORS,
    KEYED_ERRORS,
    MethodNotAllowedError,
    MissingFieldError,
    NotFoundError,
    NotReadyError,
    ServeError,
    TooManyRequestsError,
    UnauthorizedError,
    error_body,
    error_responses,
    headers_for,
    status_for,
)
from medsight.serve.feedback_desk import FeedbackDesk, prediction_record, user_id
from medsight.serve.lifecycle import ModelSlot, on_model
from medsight.serve.metrics import Metrics
from medsight.serve.model import ModelService
from medsight.serve.negotiate import mask_format
from medsight.serve.observe import ObserveRequests, SecurityHeaders
from medsight.serve.schema import FEEDBACK_DOC, PREDICT_OK, UPLOAD_DOC, FeedbackAnswer, Readiness
from medsight.serve.settings import ServeSettings, settings_from_env
from medsight.serve.uploads import read_upload, sample_from_upload

log = logging.getLogger("medsight.serve")
STATIC = Path(__file__).with_name("static")
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_KEYED_ERRORS = error_responses(*COMMON_ERRORS, *KEYED_ERRORS, 503)


def create_app(settings: ServeSettings) -> FastAPI:
    """The service for one bundle; the model loads once, when the app starts (lifespan).

    Raises:
        ConfigError: no API key without ``no_auth``, or ``no_auth`` on a non-loopback host; neither a bundle
            nor a registry.
    """
    from medsight.errors import ConfigError

    check_auth_settings(keys=settings.api_keys, no_auth=settings.no_auth, host=settings.host)
    if settings.bundle is None and settings.registry is None:
        raise ConfigError("medsight serve", "no model to serve", "pass a bundle folder or --registry DIR")
    metrics = Metrics()
    slot = ModelSlot(settings, metrics)

    app = FastAPI(title="medsight", version=__version__, lifespan=slot.lifespan, docs_url=None, redoc_url=None,
                  description="Medical image classification, segmentation and detection from a medsight bundle.",
                  responses=error_responses(*COMMON_ERRORS))
    app.state.service = None
    app.state.metrics = metrics
    app.add_middleware(ObserveRequests, metrics=metrics)
    app.add_middleware(SecurityHeaders)
    _add_error_handlers(app)
    keyed = [Depends(_key_check(settings))]
    _add_inference_routes(app, settings, metrics, keyed)
    _add_operation_routes(app, settings, slot, metrics, keyed)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _key_check(settings: ServeSettings) -> Callable[[Request], None]:
    """The dependency every keyed endpoint runs: a valid key passes; too many failures from one address are a
    429 with ``Retry-After``, any other failure a 401."""
    failures = FailedAuthLimit(settings.auth_failures_per_minute)

    def require_key(request: Request) -> None:
        if settings.no_auth or key_is_valid(key_from_headers(request.headers), settings.api_keys):
            return
        wait = failures.failed(request.client.host if request.client else "unknown")
        if wait is not None:
            raise TooManyRequestsError("API key", "too many failed authentications from this address",
                                       f"retry after {wait} s with a configured key", retry_after_s=wait)
        raise UnauthorizedError(
            "API key",
            "missing or not one of the service's keys",
            "send a configured key in the X-API-Key header or as 'Authorization: Bearer <key>'",
        )

    return require_key


def _service_of(request: Request) -> ModelService:
    """The model now served, or a 503 while it loads."""
    service = request.app.state.service
    if service is None:
        raise NotReadyError("model", "is not loaded yet", "retry when /readyz answers 200")
    return service


def _add_error_handlers(app: FastAPI) -> None:
    """Every error, ours or the framework's, answers the one JSON error body."""

    @app.exception_handler(MedsightError)
    async def medsight_error(request: Request, exc: MedsightError) -> JSONResponse:
        status = status_for(exc)
        # the error type only: messages name the client's file, which may name the patient
        log.info("%s %s -> %d %s", request.method, request.url.path, status, type(exc).__name__)
        return JSONResponse(error_body(exc), status_code=status, headers=headers_for(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        kind = {404: NotFoundError, 405: MethodNotAllowedError}.get(exc.status_code, ServeError)
        error = kind(request.url.path, str(exc.detail).lower(), "see /openapi.json for the endpoints and methods")
        return JSONResponse(error_body(error), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        where = ", ".join(".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()) or "request"
        error = MissingFieldError(where, "is missing or has the wrong type", "see /openapi.json for the parameters")
        return JSONResponse(error_body(error), status_code=422)


def _add_inference_routes(app: FastAPI, settings: ServeSettings, metrics: Metrics, keyed: list) -> None:
    """``/v1/predict``, ``/v1/explain`` and ``/v1/feedback``: the endpoints that take an upload."""
    desk = FeedbackDesk(settings.feedback, max_body_bytes=settings.max_body_bytes, max_voxels=settings.max_voxels,
                        no_auth=settings.no_auth)

    def upload_sample(upload):
        return sample_from_upload(upload, max_voxels=settings.max_voxels)

    @app.post("/v1/predict", dependencies=keyed, openapi_extra=UPLOAD_DOC, tags=["inference"],
              responses={200: PREDICT_OK, **error_responses(406), **_KEYED_ERRORS},
              summary="Classify an image, segment it (the mask by Accept), or find boxes in it")
    async def predict(request: Request, preview: bool = False) -> Response:
        service = _service_of(request)
        start = perf_counter()
        upload = await read_upload(request, limit_bytes=settings.max_body_bytes)
        began = perf_counter()
        sample = await run_in_threadpool(upload_sample, upload)
        decode_ms = ms(perf_counter() - began)
        user = user_id(request, settings.no_auth)
        if service.task in ("classification", "detection"):  # JSON whatever the Accept header
            answer = classify_body if service.task == "classification" else detect_body
            body, seconds = await on_model(request.app, partial(answer, service, sample, preview))
            metrics.observe_inference(service.task, seconds)
            body["timing_ms"] = {"decode": decode_ms, "inference": ms(seconds)}
            body["input_sha256"] = desk.remember(upload, prediction_record(body, service), user)
            return JSONResponse(finish(body, service, upload, sample, start))
        fmt = mask_format(request.headers.get("accept"), spatial_dims=sample.spatial_dims)
        result, preview_png, seconds = await on_model(
            request.app, partial(segment_result, service, sample, preview and fmt == "json"))
        metrics.observe_inference(service.task, seconds)
        timing = {"decode": decode_ms, "inference": ms(seconds)}
        if fmt == "json":
            body = mask_json(result, sample, preview_png, timing)
            body["input_sha256"] = desk.remember(upload, prediction_record(body, service), user)
            return JSONResponse(finish(body, service, upload, sample, start))
        desk.remember(upload, prediction_record({"voxel_counts": result.voxel_counts}, service), user)
        return await run_in_threadpool(mask_file, service, upload, sample, result, fmt, timing, start)

    @app.post("/v1/explain", dependencies=keyed, openapi_extra=UPLOAD_DOC, tags=["inference"],
              summary="A heatmap PNG of what drove the prediction (501 until Grad-CAM is installed)",
              responses={200: {"content": {"image/png": {}}}, **error_responses(501), **_KEYED_ERRORS})
    async def explain(request: Request, target: str | None = None) -> Response:
        service = _service_of(request)
        service.require_explainer()  # a 501 before reading the body
        upload = await read_upload(request, limit_bytes=settings.max_body_bytes)
        sample = await run_in_threadpool(upload_sample, upload)
        png = await on_model(request.app, partial(service.explain, sample, target=target))
        return Response(png, media_type="image/png", headers={"X-Medsight-Model": service.version["hash"]})

    @app.post("/v1/feedback", dependencies=keyed, tags=["feedback"], openapi_extra=FEEDBACK_DOC, status_code=201,
              responses={201: {"model": FeedbackAnswer, "description": "the verdict, stored"}, **_KEYED_ERRORS},
              summary="A clinician's verdict on a prediction: agree, the correct label, or a corrected mask")
    async def feedback(request: Request) -> JSONResponse:
        return await desk.submit(request, _service_of(request), partial(on_model, request.app))


def _add_operation_routes(app: FastAPI, settings: ServeSettings, slot: ModelSlot, metrics: Metrics,
                          keyed: list) -> None:
    """The model card, the registry reload, metrics, health and readiness, and the web page."""

    @app.post("/v1/admin/reload", dependencies=keyed, tags=["operations"], responses=_KEYED_ERRORS,
              summary="Re-read the registry and swap in its production model now")
    async def admin_reload(request: Request) -> dict[str, Any]:
        if settings.registry is None:
            raise NotFoundError("/v1/admin/reload", "this service serves one bundle, not a registry",
                                "restart it with --registry DIR to hot-swap models")
        swapped = await slot.reload(request.app)
        return {"swapped": swapped, "model": _service_of(request).version}

    @app.get("/v1/model", dependencies=keyed, tags=["model"], summary="The model card", responses=_KEYED_ERRORS)
    async def model_card(request: Request) -> dict[str, Any]:
        service = _service_of(request)
        return {**service.card(), "load_seconds": round(service.load_seconds, 3)}

    @app.get("/metrics", dependencies=keyed, tags=["operations"],
             responses={200: {"description": "Prometheus text", "content": {"text/plain": {}}}, **_KEYED_ERRORS})
    async def metrics_text() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], response_model=Readiness,
             responses={503: {"model": Readiness, "description": "the model is not loaded yet"}})
    async def readyz(request: Request) -> JSONResponse:
        if request.app.state.service is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=_PAGE_HEADERS)


def app_from_env() -> FastAPI:
    """The uvicorn app factory for workers: ``medsight.serve.app:app_from_env``."""
    return create_app(settings_from_env())
