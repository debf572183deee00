"""The REST service: a FastAPI app built by :func:`create_app`, one model per worker.

Endpoints (``/v1/*`` and ``/metrics`` need an API key; the rest are open):

* ``POST /v1/predict``  an image (multipart field ``file`` or the raw body) -> JSON with the label,
  probabilities, threshold, model version and timing; a segmentation bundle answers with the mask
  (PNG, NIfTI or JSON by ``Accept``). ``?preview=1`` adds a PNG of the model's input (base64).
* ``POST /v1/explain``  a heatmap PNG (501 until ``medsight.explain`` is installed).
* ``GET /v1/model``     the model card.
* ``POST /v1/feedback`` a clinician's verdict on a prediction (``agree``, the correct ``label``, or a corrected
  ``mask``), for an uploaded input or the ``input_sha256`` of an earlier prediction; stored in the
  feedback folder (:mod:`medsight.feedback`). 404 when the service runs without ``feedback``.
* ``POST /v1/admin/reload`` re-read the registry now and swap in its production model.
* ``GET /healthz``      the process is alive; ``GET /readyz`` the model is loaded.
* ``GET /metrics``      Prometheus text: requests by endpoint and status, latency, model load time.
* ``GET /``             the web page; ``/static/*`` its script and style; ``/openapi.json``.

With ``registry`` set the service serves that registry's production version and watches
``registry.json`` (its mtime, every ``registry_poll_s``): a promote or rollback loads the new
bundle on a loader thread while requests go on, then swaps the service reference at once;
requests in flight finish on the model they started with.

Uvicorn workers build the app from :func:`app_from_env` (``--workers N``), which reads the
settings from ``$MEDSIGHT_SERVE_SETTINGS``.

Example:
    >>> app = create_app(ServeSettings(bundle=Path("runs/demo/model"), api_keys=("a-long-random-key-1",)))
    >>> # uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import tempfile
import traceback
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from time import perf_counter
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from medsight import __version__
from medsight.errors import MedsightError
from medsight.serve.auth import check_auth_settings, key_from_headers, key_is_valid, load_api_keys
from medsight.serve.errors import (
    MissingFieldError,
    NotReadyError,
    ServeError,
    UnauthorizedError,
    error_body,
    status_for,
)
from medsight.serve.metrics import Metrics
from medsight.serve.model import ModelService
from medsight.serve.negotiate import CONTENT_TYPES, mask_format
from medsight.serve.pictures import b64, mask_png, middle_slice
from medsight.serve.uploads import Upload, read_body, read_upload, sample_from_upload, sniff

log = logging.getLogger("medsight.serve")
SETTINGS_ENV = "MEDSIGHT_SERVE_SETTINGS"
STATIC = Path(__file__).with_name("static")
DEFAULT_MAX_BODY_MB = 64.0
#: Recent prediction inputs kept in memory (feedback on), so feedback can name one by its hash.
RECENT_INPUTS = 64
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "description": "A DICOM, NIfTI, PNG or JPEG file, as multipart field `file` or as the raw body.",
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["file"],
                           "properties": {"file": {"type": "string", "format": "binary"}}}
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@dataclass(frozen=True)
class ServeSettings:
    """Everything a worker needs to build the app (keys are read from the file or environment)."""

    bundle: Path | None = None
    api_keys: tuple[str, ...] = ()
    no_auth: bool = False
    host: str = "127.0.0.1"
    max_body_bytes: int = int(DEFAULT_MAX_BODY_MB * 2**20)
    device: str = "cpu"
    mixed_precision: bool = False
    registry: Path | None = None
    feedback: Path | None = None
    registry_poll_s: float = 1.0


class FeedbackOffError(ServeError):
    status = 404


class UnknownInputError(ServeError):
    status = 404


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
    recent: OrderedDict[str, tuple[Upload, dict[str, Any]]] = OrderedDict()
    stores: list[Any] = []  # the feedback store, opened on first use

    def model_path() -> Path:
        if settings.registry is None:
            return Path(settings.bundle)
        from medsight.registry import ModelRegistry

        return ModelRegistry(settings.registry).production_bundle()

    def load_service(path: Path) -> ModelService:
        """The bundle at ``path`` loaded with the service's device and precision."""
        return ModelService(path, device=settings.device, mixed_precision=settings.mixed_precision)

    async def reload(app: FastAPI) -> bool:
        """Load the registry's production bundle off the request path and swap it in; True when it changed."""
        async with app.state.swap_lock:
            path = await run_in_threadpool(model_path)
            current = app.state.service
            if current is not None and current.path == path:
                return False
            start = perf_counter()
            service = await run_in_threadpool(load_service, path)
            app.state.service = service  # one reference assignment: requests in flight keep the old one
            metrics.model_loaded(perf_counter() - start)
            log.info("model swapped in: %s %s", service.version["name"], service.version["hash"])
            return True

    async def watch(app: FastAPI) -> None:
        index = Path(settings.registry) / "registry.json"
        seen = index.stat().st_mtime_ns if index.exists() else None
        while True:
            await asyncio.sleep(settings.registry_poll_s)
            stamp = index.stat().st_mtime_ns if index.exists() else None
            if stamp != seen:
                seen = stamp
                try:
                    await reload(app)
                except MedsightError as exc:  # e.g. nothing in production any more: keep serving the old model
                    log.warning("registry change not applied: %s", type(exc).__name__)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # One inference thread per worker: torch's OpenMP team lives on the thread that calls it, and
        # hopping between pool threads leaves idle teams spinning (10-100x slower on a small CPU).
        app.state.swap_lock = asyncio.Lock()
        app.state.inference = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medsight-inference")
        start = perf_counter()
        app.state.service = await _on_model(app, partial(load_service, model_path()))
        metrics.model_loaded(perf_counter() - start)
        version = app.state.service.version
        log.info("model loaded: %s %s (%s) in %.2f s", app.state.service.task, version["name"], version["hash"],
                 perf_counter() - start)
        watcher = asyncio.create_task(watch(app)) if settings.registry is not None else None
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
            app.state.service = None
            app.state.inference.shutdown(wait=False)

    app = FastAPI(title="medsight", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Medical image classification and segmentation from a medsight bundle.")
    app.state.service = None
    app.state.metrics = metrics
    app.add_middleware(_Observe, metrics=metrics)

    def require_key(request: Request) -> None:
        if not settings.no_auth and not key_is_valid(key_from_headers(request.headers), settings.api_keys):
            raise UnauthorizedError(
                "API key",
                "missing or not one of the service's keys",
                "send a configured key in the X-API-Key header or as 'Authorization: Bearer <key>'",
            )

    def service_of(request: Request) -> ModelService:
        service = request.app.state.service
        if service is None:
            raise NotReadyError("model", "is not loaded yet", "retry when /readyz answers 200")
        return service

    @app.exception_handler(MedsightError)
    async def medsight_error(request: Request, exc: MedsightError) -> JSONResponse:
        status = status_for(exc)
        # the error type only: messages name the client's file, which may name the patient
        log.info("%s %s -> %d %s", request.method, request.url.path, status, type(exc).__name__)
        headers = {"WWW-Authenticate": 'Bearer realm="medsight"'} if status == 401 else None
        return JSONResponse(error_body(exc), status_code=status, headers=headers)

    keyed = [Depends(require_key)]

    @app.post("/v1/predict", dependencies=keyed, openapi_extra=_UPLOAD_DOC, tags=["inference"],
              summary="Classify an image, or segment it (the mask by Accept)")
    async def predict(request: Request, preview: bool = False) -> Response:
        service = service_of(request)
        start = perf_counter()
        upload = await read_upload(request, limit_bytes=settings.max_body_bytes)
        began = perf_counter()
        sample = await run_in_threadpool(sample_from_upload, upload)
        decode_ms = _ms(perf_counter() - began)
        if service.task == "classification":
            body, seconds = await _on_model(request.app, partial(_classify, service, sample, preview))
            metrics.observe_inference(service.task, seconds)
            body["timing_ms"] = {"decode": decode_ms, "inference": _ms(seconds)}
            body["input_sha256"] = remember(upload, _prediction_record(body, service))
            return JSONResponse(_finish(body, service, upload, sample, start))
        fmt = mask_format(request.headers.get("accept"), spatial_dims=sample.spatial_dims)
        result, preview_png, seconds = await _on_model(
            request.app, partial(_segment, service, sample, preview and fmt == "json"))
        metrics.observe_inference(service.task, seconds)
        timing = {"decode": decode_ms, "inference": _ms(seconds)}
        if fmt == "json":
            body = _mask_json(result, sample, preview_png, timing)
            body["input_sha256"] = remember(upload, _prediction_record(body, service))
            return JSONResponse(_finish(body, service, upload, sample, start))
        remember(upload, _prediction_record({"voxel_counts": result.voxel_counts}, service))
        return await run_in_threadpool(_mask_file, service, upload, sample, result, fmt, timing, start)

    @app.post("/v1/explain", dependencies=keyed, openapi_extra=_UPLOAD_DOC, tags=["inference"],
              summary="A heatmap PNG of what drove the prediction (501 until Grad-CAM is installed)",
              responses={200: {"content": {"image/png": {}}}, 501: {"description": "explanations not installed"}})
    async def explain(request: Request, target: str | None = None) -> Response:
        service = service_of(request)
        service.require_explainer()  # a 501 before reading the body
        upload = await read_upload(request, limit_bytes=settings.max_body_bytes)
        sample = await run_in_threadpool(sample_from_upload, upload)
        png = await _on_model(request.app, partial(service.explain, sample, target=target))
        return Response(png, media_type="image/png", headers={"X-Medsight-Model": service.version["hash"]})

    def remember(upload: Upload, prediction: dict[str, Any]) -> str:
        """The input's SHA-256; with feedback on, the input and prediction are kept for a later verdict."""
        sha = hashlib.sha256(upload.data).hexdigest()
        if settings.feedback is not None:
            recent[sha] = (upload, prediction)
            recent.move_to_end(sha)
            while len(recent) > RECENT_INPUTS:
                recent.popitem(last=False)
        return sha

    @app.post("/v1/feedback", dependencies=keyed, tags=["feedback"],
              summary="A clinician's verdict on a prediction: agree, the correct label, or a corrected mask")
    async def feedback(request: Request) -> JSONResponse:
        if settings.feedback is None:
            raise FeedbackOffError("/v1/feedback", "this service was started without a feedback folder",
                                   "restart it with --feedback DIR to collect verdicts")
        service = service_of(request)
        fields, upload, mask = await _feedback_request(request, settings.max_body_bytes)
        verdict = {"correct": "label"}.get(fields.get("verdict", ""), fields.get("verdict", ""))
        label = fields.get("label") or None
        if verdict == "label" and service.task == "classification" and label not in service.bundle.label_names:
            raise MissingFieldError(f"label {label!r}", f"is not one of the model's labels "
                                    f"{service.bundle.label_names}", "send label=NAME with one of them")
        if not stores:
            stores.append(await run_in_threadpool(_store, settings.feedback))
        store = stores[0]
        if upload is not None:
            sha = hashlib.sha256(upload.data).hexdigest()
            prediction = recent[sha][1] if sha in recent else None
        else:
            sha = fields.get("input_sha256", "").strip().lower()
            if not sha:
                raise MissingFieldError("feedback", "names no input", "attach the image as 'file' or send input_sha256")
            upload, prediction = recent.get(sha, (None, None))
        if upload is not None:
            sha, input_path = await run_in_threadpool(store.save_input, upload.data, upload.kind)
        else:
            input_path = await run_in_threadpool(store.has_input, sha)
            if input_path is None:
                raise UnknownInputError(f"input {sha[:16]}", "is not among this service's recent or stored inputs",
                                        "send the image itself as multipart field 'file'")
        if prediction is None and upload is not None and service.task == "classification":
            sample = await run_in_threadpool(sample_from_upload, upload)
            prediction = _prediction_record(await _on_model(request.app, partial(service.classify, sample)), service)
        mask_path = None
        if mask is not None:
            mask_path = await run_in_threadpool(store.save_mask, sha, mask.data, mask.suffix)
        row = await run_in_threadpool(partial(
            store.add, sha256=sha, input_path=input_path, user_id=_user_id(request, settings.no_auth),
            model_name=service.version["name"], model_version=service.version["hash"], kind=verdict,
            prediction=prediction or {}, label=label, mask_path=mask_path))
        log.info("feedback stored: %s", verdict)
        return JSONResponse({"id": row["id"], "input_sha256": sha, "kind": verdict, "label": label,
                             "model": service.version, "created_utc": row["created_utc"]}, status_code=201)

    @app.post("/v1/admin/reload", dependencies=keyed, tags=["operations"],
              summary="Re-read the registry and swap in its production model now")
    async def admin_reload(request: Request) -> dict[str, Any]:
        if settings.registry is None:
            raise FeedbackOffError("/v1/admin/reload", "this service serves one bundle, not a registry",
                                   "restart it with --registry DIR to hot-swap models")
        swapped = await reload(request.app)
        return {"swapped": swapped, "model": service_of(request).version}

    @app.get("/v1/model", dependencies=keyed, tags=["model"], summary="The model card")
    async def model_card(request: Request) -> dict[str, Any]:
        service = service_of(request)
        return {**service.card(), "load_seconds": round(service.load_seconds, 3)}

    @app.get("/metrics", dependencies=keyed, tags=["operations"], response_class=PlainTextResponse)
    async def metrics_text() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    async def readyz(request: Request) -> JSONResponse:
        service = request.app.state.service
        if service is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ready", "model": service.version})

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=_PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _store(root: Path):
    from medsight.feedback import FeedbackStore

    return FeedbackStore(root)


def _prediction_record(body: dict[str, Any], service: ModelService) -> dict[str, Any]:
    """What the feedback row keeps of a prediction: label and probabilities (or voxel counts) and the model."""
    keep = {k: body[k] for k in ("label", "probabilities", "threshold") if k in body}
    if "voxel_counts" in body:
        keep["voxel_counts"] = {str(k): int(v) for k, v in body["voxel_counts"].items()}
    return {**keep, "model_version": service.version["hash"]}


def _user_id(request: Request, no_auth: bool) -> str:
    """A pseudonymous id of the caller: a hash of its API key (``local`` without auth); never the key itself."""
    key = key_from_headers(request.headers)
    if no_auth or not key:
        return "local"
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


async def _feedback_request(request: Request, limit_bytes: int) -> tuple[dict[str, str], Upload | None, Upload | None]:
    """``(fields, input upload, mask upload)`` of a JSON body or a multipart form (fields ``file``, ``mask``)."""
    from starlette.requests import Request as StarletteRequest

    body = await read_body(request, limit_bytes=limit_bytes)
    ctype = request.headers.get("content-type", "").lower()
    if ctype.startswith("application/json"):
        try:
            raw = json.loads(body or b"{}")
        except json.JSONDecodeError as exc:
            raise MissingFieldError("feedback JSON", f"is not valid JSON ({exc.msg})",
                                    'send e.g. {"input_sha256": "...", "verdict": "agree"}') from exc
        if not isinstance(raw, dict):
            raise MissingFieldError("feedback JSON", "is not an object", 'send {"input_sha256": ..., "verdict": ...}')
        return {k: str(v) for k, v in raw.items() if v is not None}, None, None
    if not ctype.startswith("multipart/form-data"):
        raise MissingFieldError("feedback", f"content type {ctype or 'none'} is not JSON or multipart",
                                "send application/json or multipart/form-data")

    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    form = await StarletteRequest(request.scope, replay).form(max_files=2, max_fields=16)
    try:
        fields, files = {}, {}
        for name, item in form.multi_items():
            if isinstance(item, str):
                fields[name] = item
            elif name in ("file", "mask"):
                data, filename = await item.read(), Path(item.filename).name if item.filename else None
                files[name] = Upload(data, filename, *sniff(data, filename))
    finally:
        await form.close()
    return fields, files.get("file"), files.get("mask")


async def _on_model(app: FastAPI, work: Callable[[], Any]) -> Any:
    """Run ``work`` on the worker's single inference thread."""
    return await asyncio.get_running_loop().run_in_executor(app.state.inference, work)


def _classify(service: ModelService, sample, preview: bool) -> tuple[dict[str, Any], float]:
    start = perf_counter()
    body: dict[str, Any] = {"task": "classification", **service.classify(sample)}
    seconds = perf_counter() - start
    if preview:
        body["preview_png"] = b64(service.preview(sample))
    return body, seconds


def _segment(service: ModelService, sample, preview: bool) -> tuple[Any, bytes | None, float]:
    start = perf_counter()
    result = service.segment(sample)
    seconds = perf_counter() - start
    return result, service.preview(sample) if preview else None, seconds


def _mask_json(result, sample, preview_png: bytes | None, timing: dict[str, float]) -> dict[str, Any]:
    """Voxel counts and the mask as a base64 PNG (a volume: its middle slice along the first axis)."""
    body: dict[str, Any] = {
        "task": "segmentation",
        "label_names": list(result.label_names),
        "voxel_counts": {k: int(v) for k, v in result.voxel_counts.items()},
        "mask_shape": list(result.labels.shape),
        "mask_slice": result.labels.shape[0] // 2 if sample.spatial_dims == 3 else None,
        "mask_png": b64(mask_png(middle_slice(result.labels, sample.spatial_dims))),
        "timing_ms": timing,
    }
    if preview_png is not None:
        body["preview_png"] = b64(preview_png)
    return body


def _mask_file(service: ModelService, upload: Upload, sample, result, fmt: str, timing: dict[str, float],
               start: float) -> Response:
    """The mask as a PNG or NIfTI file in the source geometry, the facts in X-Medsight-* headers."""
    from medsight.inference.postprocess import write_mask

    suffix = ".png" if fmt == "png" else ".nii.gz"
    with tempfile.TemporaryDirectory(prefix="medsight-mask-") as folder:
        data = write_mask(result.labels, sample, Path(folder) / f"mask{suffix}").read_bytes()
    timing["total"] = _ms(perf_counter() - start)
    headers = {
        "X-Medsight-Model": f"{service.version['name']} {service.version['hash']}",
        "X-Medsight-Timing-Ms": json.dumps(timing),
        "X-Medsight-Voxel-Counts": json.dumps({k: int(v) for k, v in result.voxel_counts.items()}),
        "Content-Disposition": f'attachment; filename="mask{suffix}"',
    }
    _log_ok(service.task, upload, timing)
    return Response(data, media_type=CONTENT_TYPES[fmt], headers=headers)


def _finish(body: dict[str, Any], service: ModelService, upload: Upload, sample, start: float) -> dict[str, Any]:
    body["input"] = _describe(upload, sample)
    body["model"] = service.version
    body["timing_ms"]["total"] = _ms(perf_counter() - start)
    _log_ok(service.task, upload, body["timing_ms"])
    return body


def _describe(upload: Upload, sample) -> dict[str, Any]:
    return {"type": upload.kind, "bytes": len(upload.data), "shape": list(sample.array.shape),
            "spacing": [round(float(s), 4) for s in sample.spacing]}


def _log_ok(task: str, upload: Upload, timing: dict[str, float]) -> None:
    # sizes, types and timings only: never the file name or any DICOM field
    log.info("%s ok: %s upload, %d bytes, %s ms", task, upload.kind, len(upload.data), timing)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


class _Observe:
    """ASGI middleware: counts and times every request by route template and status, and turns an
    unexpected exception into a 500 JSON answer whose log line holds the error type and the code
    location only (an exception message may quote file contents, so it is never logged)."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = perf_counter()
        status = 0

        async def observed_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        except Exception as exc:
            if status:  # the response has begun; nothing else can be sent
                raise
            where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}"
                                for f in reversed(traceback.extract_tb(exc.__traceback__)[-4:]))
            log.error("%s %s -> 500 %s at %s", scope["method"], scope["path"], type(exc).__name__, where)
            body = {"error": {"type": "InternalError", "message": _INTERNAL, "where": None, "problem": _INTERNAL,
                              "fix": "retry; if it persists, send the operator the time of the request"}}
            await JSONResponse(body, status_code=500)(scope, receive, observed_send)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(endpoint, scope["method"], status or 500, perf_counter() - start)


_INTERNAL = "the service failed on this request (an internal error, logged without patient data)"


def settings_from_env(env: dict[str, str] | None = None) -> ServeSettings:
    """The settings :func:`run_server` handed to its workers through ``$MEDSIGHT_SERVE_SETTINGS``."""
    env = dict(os.environ if env is None else env)
    raw = json.loads(env[SETTINGS_ENV])
    keys = load_api_keys(raw.pop("api_keys_file"), env=env)
    paths = {k: Path(raw.pop(k)) if raw.get(k) else raw.pop(k, None) for k in ("bundle", "registry", "feedback")}
    return ServeSettings(**paths, api_keys=tuple(keys), **raw)


def settings_to_env(settings: ServeSettings, api_keys_file: Path | None) -> str:
    """The JSON for ``$MEDSIGHT_SERVE_SETTINGS``: no key material, only the key file's path."""
    raw = asdict(settings)
    raw.pop("api_keys")
    paths = {k: str(getattr(settings, k)) if getattr(settings, k) else None for k in ("bundle", "registry", "feedback")}
    return json.dumps({**raw, **paths, "api_keys_file": str(api_keys_file) if api_keys_file else None})


def app_from_env() -> FastAPI:
    """The uvicorn app factory for workers: ``medsight.serve.app:app_from_env``."""
    return create_app(settings_from_env())
