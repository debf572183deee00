"""``POST /v1/feedback``: a clinician's verdict on a prediction, kept in the feedback folder.

A :class:`FeedbackDesk` belongs to one app. With a feedback folder it remembers the last
:data:`RECENT_INPUTS` prediction inputs (by API key and SHA-256) with what was predicted, so a
verdict can name an earlier prediction by ``input_sha256`` instead of uploading the image again;
the :class:`~medsight.feedback.FeedbackStore` opens on the first verdict. Without a folder the
desk refuses verdicts with a 404 that says how to turn feedback on.

Feedback is scoped to the API key: a verdict may name only an input that the same key sent, and
a hash another key sent is answered exactly like an unknown one (same 404, same body), so the
answer does not tell whether anybody uploaded that image. Everything is checked before anything
is stored (the fields, the verdict, the label, the input and mask decoded with the service's
voxel limit); the store then keeps the copies and the row together or not at all.

Example:
    >>> desk = FeedbackDesk(Path("feedback"), max_body_bytes=2**26, max_voxels=2**26, no_auth=False)
    >>> sha = desk.remember(upload, prediction_record(body, service), user_id(request, False))  # after a prediction
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

from medsight.errors import InvalidImageError, UnsupportedFileError
from medsight.feedback.store import check_hash, check_verdict
from medsight.serve.auth import key_from_headers
from medsight.serve.errors import MissingFieldError, NotFoundError
from medsight.serve.model import ModelService
from medsight.serve.uploads import Upload, client_name, parse_form, read_body, sample_from_upload, sniff

log = logging.getLogger("medsight.serve")
#: Recent prediction inputs kept in memory (feedback on), so feedback can name one by its hash.
RECENT_INPUTS = 64
#: The text fields a verdict may carry.
FIELDS = ("input_sha256", "verdict", "label")


class FeedbackDesk:
    """Takes verdicts for one app: the recent inputs, and the store opened on first use."""

    def __init__(self, folder: Path | None, *, max_body_bytes: int, max_voxels: int, no_auth: bool) -> None:
        self.folder, self.max_body_bytes, self.max_voxels, self.no_auth = folder, max_body_bytes, max_voxels, no_auth
        self.recent: OrderedDict[tuple[str, str], tuple[Upload, dict[str, Any]]] = OrderedDict()
        self._store = None

    def remember(self, upload: Upload, prediction: dict[str, Any], user: str) -> str:
        """The input's SHA-256; with feedback on, the input and prediction are kept for a later verdict by
        the same ``user``."""
        sha = hashlib.sha256(upload.data).hexdigest()
        if self.folder is not None:
            self.recent[(user, sha)] = (upload, prediction)
            self.recent.move_to_end((user, sha))
            while len(self.recent) > RECENT_INPUTS:
                self.recent.popitem(last=False)
        return sha

    async def submit(self, request: Request, service: ModelService,
                     on_model: Callable[[Callable[[], Any]], Awaitable[Any]]) -> JSONResponse:
        """Store the request's verdict (201 with the row); ``on_model`` runs work on the inference thread."""
        if self.folder is None:
            raise NotFoundError("/v1/feedback", "this service was started without a feedback folder",
                                "restart it with --feedback DIR to collect verdicts")
        user = user_id(request, self.no_auth)
        fields, upload, mask = await read_feedback_request(request, self.max_body_bytes)
        verdict = {"correct": "label"}.get(fields.get("verdict", ""), fields.get("verdict", ""))
        label = fields.get("label") or None
        check_verdict(verdict, label, has_mask=mask is not None)
        if verdict == "label" and service.task == "classification" and label not in service.bundle.label_names:
            raise MissingFieldError(f"label {label!r}", f"is not one of the model's labels "
                                    f"{service.bundle.label_names}", "send label=NAME with one of them")
        store = await self._open_store()
        sha, upload, prediction = await self._input(store, fields, upload, user)
        sample = None if upload is None else await run_in_threadpool(
            partial(sample_from_upload, upload, max_voxels=self.max_voxels))
        if mask is not None:
            await self._check_mask(mask, sample)
        if prediction is None and sample is not None and service.task == "classification":
            prediction = prediction_record(await on_model(partial(service.classify, sample)), service)
        row = await run_in_threadpool(partial(
            store.add, sha256=sha, user_id=user, model_name=service.version["name"],
            model_version=service.version["hash"], kind=verdict, prediction=prediction or {}, label=label,
            input_data=upload.data if upload else None, input_kind=upload.kind if upload else "",
            mask_data=mask.data if mask else None, mask_kind=mask.kind if mask else ""))
        log.info("feedback stored: %s", verdict)
        return JSONResponse({"id": row["id"], "input_sha256": sha, "kind": verdict, "label": label,
                             "model": service.version, "created_utc": row["created_utc"]}, status_code=201)

    async def _input(self, store, fields: dict[str, str], upload: Upload | None,
                     user: str) -> tuple[str, Upload | None, dict | None]:
        """``(sha256, upload, prediction)``: the attached image, or the input this user's fields name (a recent
        upload, or None for one the store holds from an earlier verdict).

        Raises:
            MissingFieldError: neither a file nor ``input_sha256``.
            FeedbackError: ``input_sha256`` is not a SHA-256 hex digest.
            NotFoundError: no recent or stored input of this user's has that hash (whoever else sent it).
        """
        if upload is not None:
            sha = hashlib.sha256(upload.data).hexdigest()
            return sha, upload, self.recent[(user, sha)][1] if (user, sha) in self.recent else None
        sha = fields.get("input_sha256", "").strip().lower()
        if not sha:
            raise MissingFieldError("feedback", "names no input", "attach the image as 'file' or send input_sha256")
        check_hash(sha)
        if (user, sha) in self.recent:
            return (sha, *self.recent[(user, sha)])
        if await run_in_threadpool(store.input_of, sha, user) is None:
            raise NotFoundError(f"input {sha[:16]}", "is not among this API key's recent or stored inputs",
                                "send the image itself as multipart field 'file'")
        return sha, None, None

    async def _check_mask(self, mask: Upload, sample) -> None:
        """The mask must decode, on the input's grid (when the input ``sample`` is at hand).

        Raises:
            MedsightError: an unreadable mask (4xx as any upload); InvalidImageError: another grid.
        """
        labels = await run_in_threadpool(partial(sample_from_upload, mask, max_voxels=self.max_voxels))
        if sample is not None and labels.array.shape[1:] != sample.array.shape[1:]:
            raise InvalidImageError(mask.where, f"the mask is {'x'.join(map(str, labels.array.shape[1:]))} but the "
                                    f"image is {'x'.join(map(str, sample.array.shape[1:]))}",
                                    "send the corrected mask on the image's own grid")

    async def _open_store(self):
        if self._store is None:
            from medsight.feedback import FeedbackStore

            self._store = await run_in_threadpool(FeedbackStore, self.folder)
        return self._store


def prediction_record(body: dict[str, Any], service: ModelService) -> dict[str, Any]:
    """What the feedback row keeps of a prediction: label and probabilities (or voxel counts, or the boxes) and
    the model."""
    keep = {k: body[k] for k in ("label", "probabilities", "threshold", "boxes") if k in body}
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
    """``(fields, input upload, mask upload)`` of a JSON body or a multipart form (fields ``file``, ``mask``).

    Raises:
        MissingFieldError: JSON that is not an object of strings (or not JSON, or not UTF-8).
        UnsupportedFileError: a body that is neither JSON nor multipart, or an upload that is not an image.
        UnreadableFileError: a multipart body that cannot be parsed, an empty upload.
    """
    body = await read_body(request, limit_bytes=limit_bytes)
    ctype = request.headers.get("content-type", "").lower()
    if ctype.startswith("application/json"):
        return _json_fields(body), None, None
    if not ctype.startswith("multipart/form-data"):
        raise UnsupportedFileError("feedback", f"content type {ctype or 'none'} is not JSON or multipart",
                                   "send application/json or multipart/form-data")
    form = await parse_form(request, body, max_files=2)
    try:
        fields, files = {}, {}
        for name, item in form.multi_items():
            if isinstance(item, str):
                fields[name] = item
            elif name in ("file", "mask"):
                data, filename = await item.read(), client_name(item.filename)
                files[name] = Upload(data, filename, *sniff(data, filename))
    finally:
        await form.close()
    return fields, files.get("file"), files.get("mask")


def _json_fields(body: bytes) -> dict[str, str]:
    example = '{"input_sha256": "...", "verdict": "agree"}'
    try:
        raw = json.loads(body or b"{}")
    except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8
        raise MissingFieldError("feedback JSON", f"is not valid UTF-8 JSON ({type(exc).__name__})",
                                f"send e.g. {example}") from None
    if not isinstance(raw, dict):
        raise MissingFieldError("feedback JSON", "is not an object", f"send e.g. {example}")
    wrong = sorted(k for k in FIELDS if raw.get(k) is not None and not isinstance(raw[k], str))
    if wrong:
        raise MissingFieldError("feedback JSON", f"field(s) {', '.join(wrong)} must be strings", f"send e.g. {example}")
    return {k: raw[k] for k in FIELDS if raw.get(k) is not None}
