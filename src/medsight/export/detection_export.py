"""``medsight export RUN/model --format onnx`` for a detection bundle: the network's raw head outputs as ONNX.

Writes into the bundle folder, atomically (built and checked in a staging folder first):

    model.onnx   opset 20: ``image (batch, C, *spatial)`` -> ``classification (batch, anchors, classes)`` logits and
                 ``box_regression (batch, anchors, 2 * D)`` (:mod:`medsight.export.detection_graph`); batch and
                 spatial axes dynamic (spatial sizes multiples of the coarsest stride)
    export.json  the ``onnx`` record: hashes, signature, ``preprocessing`` (outside / in / after the graph),
                 ``detection`` (the anchors per level, the box coder, the score floor, top-k, NMS IoU, the box limit,
                 the shipped score threshold, the class names: all an app needs to turn the outputs into boxes) and
                 ``parity`` (``heads``: the largest difference of each output from PyTorch against its float32
                 tolerance; ``boxes``: the boxes after the shared post-processing, matched one to one)

The export is refused (nothing written) when either check fails (:mod:`medsight.export.detection_parity`). Box
decoding and NMS stay outside the graph: MONAI's Python post-processing is what both backends run, so the Detector's
ONNX backend gives the boxes of its torch backend.

Example:
    >>> record = export_detector(folder=Path("runs/fractures/model"), bundle=load_bundle(...), data=None)
    >>> record["parity"]["heads"]["per_output"]["classification"]["max_abs_diff"]
"""

from __future__ import annotations

import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medsight.bundle import WEIGHTS
from medsight.errors import ConfigError
from medsight.export.errors import ExportError
from medsight.hashing import file_sha256


def export_detector(*, folder: Path, bundle, fmt: str, int8: bool, data: str | None,
                    progress: bool = True) -> dict[str, Any]:
    """Export the detection ``bundle`` in ``folder`` to ONNX, check it, and record it in ``export.json``.

    Returns:
        The ``onnx`` record of ``export.json``.

    Raises:
        ConfigError: TorchScript or ``--int8`` (a detector exports to fp32 ONNX only).
        DatasetError: no reachable data for the check (pass ``data``).
        ExportError: the export failed, or its head outputs or boxes differ from PyTorch's (nothing is written).
    """
    import torch

    from medsight.export.detection_graph import DetectionHeads, describe_detection, detection_preprocessing
    from medsight.export.detection_parity import check_boxes, check_heads, load_head_inputs
    from medsight.export.onnx_export import export_onnx
    from medsight.export.precise import with_precise_norms
    from medsight.export.records import FILES, install_export, versions
    from medsight.inference.detector import Detector
    from medsight.inference.detector_onnx import HEAD_OUTPUTS, OnnxHeads

    if fmt != "onnx" or int8:
        what = "--int8" if fmt == "onnx" else f"--format {fmt}"
        raise ConfigError(what, "a detection bundle exports to fp32 ONNX only (box decoding and NMS stay in Python)",
                          f"use medsight export {folder} --format onnx")
    detector = Detector(bundle, source=folder, backend="torch")
    reference = DetectionHeads(detector.detector)
    graph = DetectionHeads(detector.detector, with_precise_norms(detector.detector.network, group_norms=True))
    inputs = load_head_inputs(bundle, detector, folder, data=data, progress=progress)
    padded = list(inputs.images.shape[2:])
    try:
        staging = Path(tempfile.mkdtemp(prefix=".export-", dir=folder))
    except OSError as exc:
        raise ExportError(folder, f"cannot write into the bundle folder ({exc})", "export a writable copy") from exc
    try:
        built = staging / FILES["onnx"]
        info = export_onnx(graph, torch.from_numpy(inputs.images[:2]), built, dynamic_spatial=True,
                           output_names=HEAD_OUTPUTS, output_axes={0: "batch", 1: "anchors"})
        session = OnnxHeads(built, threads=torch.get_num_threads())
        heads = check_heads(lambda batch: tuple(o.numpy() for o in session(batch)), reference, inputs)
        boxes = check_boxes(detector, heads, inputs)
        parity = {key: heads[key] for key in ("samples", "source", "batch_sizes", "input_shapes", "max_abs_diff",
                                              "tolerance")}
        record: dict[str, Any] = {
            "file": FILES["onnx"],
            "sha256": file_sha256(built),
            "weights_sha256": file_sha256(folder / WEIGHTS),
            **info,
            "preprocessing": detection_preprocessing(bundle, padded),
            "input_preprocess": bundle.preprocess.model_dump(mode="json"),
            "detection": describe_detection(bundle, detector, padded),
            "parity": {**parity, "heads": heads["per_output"], "boxes": boxes},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": versions("onnx"),
        }
        install_export({built: folder / FILES["onnx"]}, folder, record, "onnx", bundle)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return record
