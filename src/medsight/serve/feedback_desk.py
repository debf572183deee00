"""``POST /v1/feedback``: a clinician's verdict on a prediction, kept in the feedback folder.

A :class:`FeedbackDesk` belongs to one app. With a feedback folder it remembers the last
:data:`RECENT_INPUTS` prediction inputs (by SHA-256) with what was predicted, so a verdict can
name an earlier prediction by ``input_sha256`` instead of uploading the image again; the
:class:`~medsight.feedback.FeedbackStore` opens on the first verdict. Without a folder the desk
refuses verdicts with a 404 that says how to turn feedback on.

Example:
    >>> desk = FeedbackDesk(Path("feedback"), max_body_bytes=2**26, no_auth=False)
    >>> sha = desk.remember(upload, prediction_record(body, service))  # after a prediction
    >>> response = await desk.submit(request, service, on_model)     # in the feedback route
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from medsight.serve.auth import key_from_headers
from medsight.serve.errors import MissingFieldError, NotFoundError
from medsight.serve.model import ModelService
from medsight.serve.uploads import Upload, read_body, sample_from_upload, sniff

log = logging.getLogger("medsight.serve")
#: Recent prediction inputs kept in memory (feedback on), so feedback can name one by its hash.
RECENT_INPUTS = 64


class FeedbackDesk:
    """Takes verdicts for one app: the recent inputs, and the store opened on first use."""

    def __init__(self, folder: Path | None, *, max_body_bytes: int, no_auth: bool) -> None:
        self.folder, self.max_body_bytes, self.no_auth = folder, max_body_bytes, no_auth
        self.recent: OrderedDict[str, tuple[Upload, dict[str, Any]]] = OrderedDict()
        self._store = None

    def remember(self, upload: Upload, prediction: dict[str, Any]) -> str:
        """The input's SHA-256; with feedback on, the input and prediction are kept for a later verdict."""
        sha = hashlib.sha256(upload.data).hexdigest()
        if self.folder is not None:
            self.recent[sha] = (upload, prediction)
            self.recent.move_to_end(sha)
            while len(self.recent) > RECENT_INPUTS:
                self.recent.popitem(last=False)
        return sha

    async def submit(self, request: Request, service: ModelService,
                     on_model: Callable[[Callable[[], Any]], Awaitable[Any]]) -> JSONResponse:
        """Store the request's verdict (201 with the row); ``on_model`` runs work on the inference thread."""
        if self.folder is None:
            raise NotFoundError("/v1/feedback", "this service was started without a feedback folder",
                                "restart it with --feedback DIR to collect verdicts")
        fields, upload, mask = await read_feedback_request(request, self.max_body_bytes)
        verdict = {"correct": "label"}.get(fields.get("verdict", ""), fields.get("verdict", ""))
        label = fields.get("label") or None
        if verdict == "label" and service.task == "classification" and label not in service.bundle.label_names:
            raise MissingFieldError(f"label {label!r}", f"is not one of the model's labels "
                                    f"{service.bundle.label_names}", "send label=NAME with one of them")
        store = await self._open_store()
        sha, upload, prediction = self._input(fields, upload)
        if upload is not None:
            sha, input_path = await run_in_threadpool(store.save_input, upload.data, upload.kind)
        else:
            input_path = await run_in_threadpool(store.has_input, sha)
            if input_path is None:
                raise NotFoundError(f"input {sha[:16]}", "is not among this service's recent or stored inputs",
                                    "send the image itself as multipart field 'file'")
        if prediction is None and upload is not None and service.task == "classification":
            sample = await run_in_threadpool(sample_from_upload, upload)
            prediction = prediction_record(await on_model(partial(service.classify, sample)), service)
        mask_path = None
        if mask is not None:
            mask_path = await run_in_threadpool(store.save_mask, sha, mask.data, mask.suffix)
        row = await run_in_threadpool(partial(
            store.add, sha256=sha, input_path=input_path, user_id=user_id(request, self.no_auth),
            model_name=service.version["name"], model_version=service.version["hash"], kind=verdict,
            prediction=prediction or {}, label=label, mask_path=mask_path))
        log.info("feedback stored: %s", verdict)
        return JSONResponse({"id": row["id"], "input_sha256": sha, "kind": verdict, "label": label,
                             "model": service.version, "created_utc": row["created_utc"]}, status_code=201)

    def _input(self, fields: dict[str, str], upload: Upload | None) -> tuple[str, Upload | None, dict | None]:
        """``(sha256, upload, prediction)``: the attached image, or the recent input the fields name."""
        if upload is not None:
            sha = hashlib.sha256(upload.data).hexdigest()
            return sha, upload, self.recent[sha][1] if sha in self.recent else None
        sha = fields.get("input_sha256", "").strip().lower()
        if not sha:
            raise MissingFieldError("feedback", "names no input", "attach the image as 'file' or send input_sha256")
        return (sha, *self.recent.get(sha, (None, None)))

    async def _open_store(self):
        if self._store is None:
            from medsight.feedback import FeedbackStore

            self._store = await run_in_threadpool(FeedbackStore, self.folder)
        return self._store


def prediction_record(body: dict[str, Any], service: ModelService) -> dict[str, Any]:
    """What the feedback row keeps of a prediction: label and probabilities (or voxel counts) and the model."""
    keep = {k: body[k] for k in ("label", "probabilities", "threshold") if k in body}
    if "voxel_counts" in body:
        keep["voxel_counts"] = {str(k): int(v) for k, v in body["voxel_counts"].items()}
    return {**keep, "model_version": service.version["hash"]}


def user_id(request: Request, no_auth: bool) -> str:
    """A pseudonymous id of the caller: a hash of its API key (``local`` without auth); never the key itself."""
    key = key_from_headers(request.headers)
    if no_auth or not key:
        return "local"
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


async def read_feedback_request(request: Request,
                                limit_bytes: int) -> tuple[dict[str, str], Upload | None, Upload | None]:
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
