"""The files an export writes and their record: ``export.json`` beside the bundle's weights.

Shared by every task's export (:mod:`medsight.export.exporter`, :mod:`medsight.export.detection_export`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from medsight import __version__
from medsight.atomic_write import atomic_write_text
from medsight.inference.onnx_backend import EXPORT_MANIFEST, read_export_manifest

FILES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
INT8_FILE = "model.int8.onnx"
MANIFEST_VERSION = 1


def install_export(installs: dict[Path, Path], folder: Path, record: dict, fmt: str, bundle) -> None:
    """Move the checked files into the bundle folder, then rewrite ``export.json`` whole or not at all."""
    manifest = read_export_manifest(folder)
    for source, target in installs.items():
        os.replace(source, target)
    if fmt == "onnx" and "int8" not in record:  # an int8 file from an earlier export would be stale
        (folder / INT8_FILE).unlink(missing_ok=True)
    formats = {**manifest.get("formats", {}), fmt: record}
    manifest = {
        "format_version": MANIFEST_VERSION,
        "task": bundle.task,
        "label_names": bundle.label_names,
        "threshold": bundle.threshold if bundle.detection is None else bundle.detection.score_threshold,
        "temperature": bundle.temperature,
        "formats": formats,
    }
    atomic_write_text(folder / EXPORT_MANIFEST, json.dumps(manifest, indent=2))


def versions(fmt: str) -> dict[str, str]:
    """The versions of medsight and of the libraries that wrote and checked a ``fmt`` export."""
    import torch

    found = {"medsight": __version__, "torch": torch.__version__}
    if fmt == "onnx":
        import onnx
        import onnxruntime

        found.update(onnx=onnx.__version__, onnxruntime=onnxruntime.__version__)
    return found
