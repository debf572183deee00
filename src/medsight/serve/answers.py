"""What ``POST /v1/predict`` answers: a classification's JSON, or a mask as JSON, PNG or NIfTI.

The model runs in :func:`classify_body` and :func:`segment_result` (on the worker's inference
thread); the rest shapes the answer: the timing in milliseconds, the model's version, a
description of the input (its type, size, shape and spacing; never its name or DICOM fields)
and one log line of sizes and timings.

Example:
    >>> body, seconds = classify_body(service, sample, preview=False)
    >>> finish(body | {"timing_ms": {"inference": ms(seconds)}}, service, upload, sample, start)
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from time import perf_counter
from typing import Any

from fastapi.responses import Response

from medsight.serve.model import ModelService
from medsight.serve.negotiate import CONTENT_TYPES
from medsight.serve.pictures import b64, mask_png, middle_slice
from medsight.serve.uploads import Upload

log = logging.getLogger("medsight.serve")


def classify_body(service: ModelService, sample, preview: bool) -> tuple[dict[str, Any], float]:
    start = perf_counter()
    body: dict[str, Any] = {"task": "classification", **service.classify(sample)}
    seconds = perf_counter() - start
    if preview:
        body["preview_png"] = b64(service.preview(sample))
    return body, seconds


def segment_result(service: ModelService, sample, preview: bool) -> tuple[Any, bytes | None, float]:
    start = perf_counter()
    result = service.segment(sample)
    seconds = perf_counter() - start
    return result, service.preview(sample) if preview else None, seconds


def mask_json(result, sample, preview_png: bytes | None, timing: dict[str, float]) -> dict[str, Any]:
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


def mask_file(service: ModelService, upload: Upload, sample, result, fmt: str, timing: dict[str, float],
               start: float) -> Response:
    """The mask as a PNG or NIfTI file in the source geometry, the facts in X-Medsight-* headers."""
    from medsight.inference.postprocess import write_mask

    suffix = ".png" if fmt == "png" else ".nii.gz"
    with tempfile.TemporaryDirectory(prefix="medsight-mask-") as folder:
        data = write_mask(result.labels, sample, Path(folder) / f"mask{suffix}").read_bytes()
    timing["total"] = ms(perf_counter() - start)
    headers = {
        "X-Medsight-Model": f"{service.version['name']} {service.version['hash']}",
        "X-Medsight-Timing-Ms": json.dumps(timing),
        "X-Medsight-Voxel-Counts": json.dumps({k: int(v) for k, v in result.voxel_counts.items()}),
        "Content-Disposition": f'attachment; filename="mask{suffix}"',
    }
    _log_ok(service.task, upload, timing)
    return Response(data, media_type=CONTENT_TYPES[fmt], headers=headers)


def finish(body: dict[str, Any], service: ModelService, upload: Upload, sample, start: float) -> dict[str, Any]:
    body["input"] = _describe(upload, sample)
    body["model"] = service.version
    body["timing_ms"]["total"] = ms(perf_counter() - start)
    _log_ok(service.task, upload, body["timing_ms"])
    return body


def _describe(upload: Upload, sample) -> dict[str, Any]:
    return {"type": upload.kind, "bytes": len(upload.data), "shape": list(sample.array.shape),
            "spacing": [round(float(s), 4) for s in sample.spacing]}


def _log_ok(task: str, upload: Upload, timing: dict[str, float]) -> None:
    # sizes, types and timings only: never the file name or any DICOM field
    log.info("%s ok: %s upload, %d bytes, %s ms", task, upload.kind, len(upload.data), timing)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)
