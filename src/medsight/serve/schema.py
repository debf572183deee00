"""How the OpenAPI schema describes the request bodies and answers the routes read by hand.

The upload routes and ``/v1/feedback`` read their bodies themselves (size limit first, then the
multipart parser), so FastAPI cannot infer them; these entries describe them, so that clients
and schemathesis see what the service takes and answers.

Example:
    >>> @app.post("/v1/feedback", openapi_extra=FEEDBACK_DOC, responses={201: {"model": FeedbackAnswer}})
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

_SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$", "description": "the input_sha256 a prediction answered"}
_VERDICT = {"type": "string", "enum": ["agree", "label", "correct", "mask"],
            "description": "agree with the prediction, give the correct label (`correct` is an alias), or a mask"}
_LABEL = {"type": "string", "description": "the correct label (one of the model's), for verdict `label`"}
_BINARY = {"type": "string", "format": "binary"}

UPLOAD_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "One self-contained DICOM, NIfTI, NRRD, PNG, JPEG or TIFF file, as multipart field `file` "
                       "or as the raw body. Files that refer to other files (.nhdr, .hdr/.img, DICOMDIR) are refused.",
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["file"], "properties": {"file": _BINARY}}
            },
            "application/octet-stream": {"schema": _BINARY},
        },
    }
}

FEEDBACK_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "A verdict on an earlier prediction named by `input_sha256` (JSON or multipart), or on an "
                       "image attached as `file` (multipart); a corrected mask is attached as `mask`. Only inputs "
                       "that the same API key sent can be named.",
        "content": {
            "application/json": {
                "schema": {"type": "object", "required": ["verdict", "input_sha256"],
                           "properties": {"input_sha256": _SHA256, "verdict": _VERDICT, "label": _LABEL}}
            },
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["verdict"],
                           "properties": {"verdict": _VERDICT, "label": _LABEL, "input_sha256": _SHA256,
                                          "file": _BINARY, "mask": _BINARY}}
            },
        },
    }
}

#: What ``/v1/predict`` answers with 200: JSON (classification, or a mask as JSON), or a mask file.
PREDICT_OK = {"description": "the prediction (JSON), or the mask as PNG or NIfTI by Accept",
              "content": {"application/json": {}, "image/png": {}, "application/gzip": {}}}


class ModelVersion(BaseModel):
    """The served model: its name, the hash of its bundle files, when and by which medsight it was made."""

    name: str
    hash: str
    created: str | None = None
    medsight: str | None = None
    backend: str | None = None
    precision: str | None = None


class FeedbackAnswer(BaseModel):
    """The stored verdict."""

    id: int
    input_sha256: str
    kind: str
    label: str | None
    model: ModelVersion
    created_utc: str


class Readiness(BaseModel):
    """``ready`` once the model is loaded (200), ``loading`` before (503); nothing about the model."""

    status: str
