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

_NUMBER = {"type": "number"}
_PIXEL_EDGE = {"type": "number", "description": "a continuous pixel edge in the image's own pixels"}
_DETECTED_BOX = {
    "type": "object",
    "description": "one box: x the column, y the row (pixel edges: exactly pixel (row 3, column 5) is x1=5, y1=3, "
                   "x2=6, y2=4); a volume adds z (voxel axis 0), voxel_corners (the volume's index order) and the "
                   "bounds in mm (RAS+)",
    "required": ["x1", "y1", "x2", "y2", "label", "score", "finding"],
    "properties": {
        **{k: _PIXEL_EDGE for k in ("x1", "y1", "x2", "y2", "z1", "z2")},
        "label": {"type": "string"},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "finding": {"type": "boolean", "description": "score >= the bundle's threshold"},
        "voxel_corners": {"type": "array", "items": _NUMBER, "minItems": 6, "maxItems": 6},
        **{f"{k}_mm": _NUMBER for k in ("x1", "y1", "z1", "x2", "y2", "z2")},
    },
}
#: The JSON a detection bundle answers (:mod:`medsight.serve.detections`).
DETECTION_ANSWER: dict[str, Any] = {
    "type": "object",
    "title": "DetectionAnswer",
    "required": ["task", "label_names", "threshold", "threshold_note", "image_size", "box_slice", "n_boxes",
                 "n_findings", "boxes", "out_of_domain", "domain_reasons", "timing_ms", "input", "model",
                 "input_sha256"],
    "properties": {
        "task": {"const": "detection"},
        "label_names": {"type": "array", "items": {"type": "string"}},
        "threshold": {"type": "number", "description": "the bundle's score threshold: boxes at or above are findings"},
        "threshold_note": {"type": "string", "description": "how the threshold was chosen"},
        "image_size": {"type": "object", "required": ["width", "height"],
                       "properties": {k: {"type": "integer"} for k in ("width", "height", "depth")}},
        "box_slice": {"type": ["integer", "null"], "description": "a volume: the middle slice (axis 0) the preview "
                                                                  "shows"},
        "n_boxes": {"type": "integer"},
        "n_findings": {"type": "integer"},
        "boxes": {"type": "array", "items": _DETECTED_BOX},
        "out_of_domain": {"type": ["boolean", "null"], "description": "null: not checked (see domain_note)"},
        "domain_reasons": {"type": "array", "items": {"type": "string"}},
        "domain_note": {"type": ["string", "null"]},
        "timing_ms": {"type": "object", "additionalProperties": _NUMBER},
        "input": {"type": "object"},
        "model": {"type": "object"},
        "input_sha256": _SHA256,
        "preview_png": {"type": "string", "description": "with ?preview=1: the image the boxes lie on (base64 PNG)"},
    },
}
#: The JSON a classifier or a segmenter answers (described in the service's guide).
_OTHER_ANSWER = {"type": "object", "required": ["task"], "properties": {"task": {"enum": ["classification",
                                                                                           "segmentation"]}}}

#: What ``/v1/predict`` answers with 200: JSON (classification, a mask as JSON, or boxes), or a mask file.
PREDICT_OK = {"description": "the prediction (JSON), the mask as PNG or NIfTI by Accept, or the boxes (JSON)",
              "content": {"application/json": {"schema": {"oneOf": [DETECTION_ANSWER, _OTHER_ANSWER]}},
                          "image/png": {}, "application/gzip": {}}}


class ModelVersion(BaseModel):
    """The served model: its name, the hash of its bundle files, when and by which medsight it was made."""

    name: str
    hash: str
    created: str | None = None
    medsight: str | None = None
    backend: str | None = None
    precision: str | None = None
    profile: str | None = None  # a segmenter's inference profile (fast, accurate)


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
