"""The ONNX Runtime backend every bundle consumer shares: which export a backend runs, and the session for it.

``medsight export BUNDLE --format onnx`` writes ``model.onnx`` (and for a segmentation fold ensemble one file per
member) with ``export.json``, which records the hash of the weights each came from. :func:`onnx_export_record`
says whether a backend (``auto``, ``torch`` or ``onnx``) runs that export: ``auto`` takes it when the bundle
folder has a current one, ONNX Runtime is installed and the device is the CPU, and warns and falls back to
PyTorch on a stale one; ``onnx`` raises instead. :class:`OnnxLogits` runs the graph's ``logits`` output as if it
were the network.

Example:
    >>> record = onnx_export_record(Path("runs/demo/model"), "auto")
    >>> net = OnnxLogits(onnx_session(Path("runs/demo/model") / record["file"]))
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medsight.bundle import WEIGHTS
from medsight.errors import BundleError, ConfigError
from medsight.hashing import file_sha256

EXPORT_MANIFEST = "export.json"
BACKENDS = ("auto", "torch", "onnx")


class OnnxLogits:
    """The ONNX graph's ``logits`` output as a network (of a
    :class:`~medsight.inference.classifier.CalibratedClassifier`, or of a segmenter's sliding window): a float
    tensor batch in, CPU logits out. It runs on the CPU only, so moving it (``to``) and its train or eval mode
    change nothing."""

    training = False

    def __init__(self, session) -> None:
        self.session = session

    def __call__(self, images):
        import torch

        batch = np.ascontiguousarray(images.cpu().numpy(), np.float32)  # NCHW, whatever the tensor's layout
        return torch.from_numpy(self.session.run(["logits"], {"image": batch})[0])

    def eval(self) -> OnnxLogits:
        return self

    def train(self, mode: bool = True) -> OnnxLogits:
        return self

    def to(self, device) -> OnnxLogits:
        return self


def read_export_manifest(folder: str | Path) -> dict[str, Any]:
    """The bundle folder's ``export.json``; an empty dict when it has none.

    Raises:
        BundleError: the file is not valid JSON.
    """
    path = Path(folder) / EXPORT_MANIFEST
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(path, f"not valid JSON ({exc})", f"delete it and run medsight export {folder}") from exc


def onnx_export_record(folder: Path | None, backend: str, *, device_type: str = "cpu",
                       check: Callable[[dict[str, Any]], str | None] | None = None) -> dict[str, Any] | None:
    """The current ONNX export in ``folder`` that ``backend`` runs (see the module), or None for PyTorch;
    ``check(record)``, when given, says what else makes an export unfit for this bundle (None: nothing).

    Raises:
        ConfigError: ``"onnx"`` on a device other than the CPU.
        BundleError: ``"onnx"`` without a folder or without a current, matching export.
    """
    if backend == "torch":
        return None
    if backend == "auto" and (
        folder is None or device_type != "cpu" or importlib.util.find_spec("onnxruntime") is None
    ):
        return None
    if backend == "onnx" and device_type != "cpu":
        raise ConfigError(f"device={device_type}", "the ONNX backend runs on the CPU", "use backend='torch' on a GPU")
    if folder is None:
        raise BundleError("bundle", "an ONNX backend needs the bundle folder", "pass the folder, not a Bundle")
    problem = None
    record = read_export_manifest(folder).get("formats", {}).get("onnx")
    if record is None:
        problem = "has no ONNX export"
    elif record.get("weights_sha256") != file_sha256(folder / WEIGHTS):
        problem = f"{record['file']} was exported from other weights than {WEIGHTS}"
    elif not (folder / record["file"]).is_file() or file_sha256(folder / record["file"]) != record["sha256"]:
        problem = f"{record['file']} is missing or differs from the one {EXPORT_MANIFEST} records"
    elif check is not None:
        problem = check(record)
    if problem is None:
        return record
    fix = f"run `medsight export {folder} --format onnx`"
    if backend == "onnx":
        raise BundleError(folder, problem, fix)
    if record is not None:  # an export exists but is stale: say so, then use the weights
        warnings.warn(f"{folder}: {problem}; using PyTorch ({fix})", stacklevel=4)
    return None


def onnx_session(path: str | Path, *, threads: int = 0):
    """An ONNX Runtime CPU session for ``path``; ``threads`` 0 lets ONNX Runtime choose.

    Raises:
        BundleError: ONNX Runtime cannot load the file.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.log_severity_level = 3  # errors only: no per-session warnings on stderr
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise BundleError(path, f"ONNX Runtime cannot load it ({exc})", "export the bundle again") from exc
