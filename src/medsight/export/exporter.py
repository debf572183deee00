"""``export_bundle``: a bundle -> ONNX or TorchScript files beside its weights, checked on real images.

Files written into the bundle folder (atomically: everything is built and checked in a
staging folder first, so a failed export leaves the bundle as it was):

    model.onnx            fp32 ONNX, opset 20, dynamic batch (and spatial axes for segmentation)
    model.member<k>.onnx  a segmentation fold ensemble's members, one file each (checked like model.onnx)
    model.int8.onnx       with --int8: ONNX Runtime dynamic int8 quantisation of model.onnx
    model.torchscript.pt  TorchScript archive (torch.jit.load; not a pickle)
    export.json           the label names, the threshold and the calibration temperature; per
                          format: file, SHA-256 of it and of the weights it came from, opset,
                          input/output names and shapes, the preprocessing (outside the graph /
                          in it / after it), ``calibration`` (the temperature the graph divides the
                          logits by before the head, and why the bundle has it or not), parity
                          numbers and the int8 metric loss

Checks: the fp32 probabilities must match PyTorch's within :data:`PARITY_TOLERANCE` on every
sample; int8 may lose at most :data:`MAX_INT8_LOSS` (one point) of the validation metric.

Example:
    >>> result = export_bundle(bundle=Path("runs/demo/model"), fmt="onnx", int8=True)
    >>> result["parity"]["max_abs_diff"] <= 1e-4, result["int8"]["loss_points"] <= 1
    (True, True)
"""

from __future__ import annotations

import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medsight.bundle import WEIGHTS, load_bundle
from medsight.errors import ConfigError
from medsight.export.errors import ExportError
from medsight.export.records import FILES, INT8_FILE, install_export, versions
from medsight.hashing import file_sha256

FORMATS = ("onnx", "torchscript")
#: a segmentation fold ensemble's member ``k`` as an ONNX file of its own
MEMBER_FILE = "model.member{k}.onnx"
#: Largest allowed |p_export - p_pytorch| on any probability (fp32).
PARITY_TOLERANCE = 1e-4
#: Largest allowed drop of the validation metric with int8 (0.01 = one point on a 0-1 metric).
MAX_INT8_LOSS = 0.01


def export_bundle(
    *,
    bundle: str | Path,
    fmt: str,
    int8: bool = False,
    data: str | None = None,
    metric: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Export a bundle to ``fmt``, check it on real images, and record it in ``export.json``.

    Args:
        bundle: the bundle folder (``RUN_DIR/model``).
        fmt: ``"onnx"`` or ``"torchscript"``.
        int8: also write ``model.int8.onnx`` (ONNX only) and check its metric loss.
        data: the data set for the checks; default the one recorded in the bundle.
        metric: the validation metric the int8 check compares; default ``auc`` for a
            classifier (any of :data:`medsight.classification.metrics.METRIC_KEYS`), ``dice`` (pooled
            over the parity patches) for a segmenter. A detection bundle exports to fp32 ONNX only
            (:mod:`medsight.export.detection_export`).
        progress: show progress while loading the validation images.

    Returns:
        The format's ``export.json`` record, plus ``"folder"``.

    Raises:
        ConfigError: an unknown format or metric, ``int8`` with TorchScript.
        BundleError: no bundle at ``bundle``.
        DatasetError: no reachable data (pass ``data``).
        ExportError: the export failed, or missed the parity or int8 limits (nothing is written).
    """
    import torch

    from medsight.export.graph import build_graph, describe_preprocessing
    from medsight.export.parity import check_parity, load_parity_data

    folder = Path(bundle)
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt}", "unknown export format", f"use one of {', '.join(FORMATS)}")
    if int8 and fmt != "onnx":
        raise ConfigError("--int8", f"int8 quantisation is for ONNX, not {fmt}", "use --format onnx --int8")
    model_bundle = load_bundle(folder)
    if model_bundle.task == "detection":
        return _export_detector(folder, model_bundle, fmt=fmt, int8=int8, data=data, progress=progress)
    metric = _metric(model_bundle.task, metric) if int8 else None
    graph, input_preprocess = build_graph(model_bundle)
    parity = load_parity_data(model_bundle, folder, data=data, input_preprocess=input_preprocess, progress=progress)
    example = torch.from_numpy(parity.inputs[:2] if len(parity.inputs) > 1 else parity.inputs.repeat(2, axis=0))
    staging = _staging(folder)
    try:
        built = staging / FILES[fmt]
        info, run = _build(fmt, graph, example, built, segmentation=model_bundle.task == "segmentation")
        check = check_parity(run, parity, tolerance=PARITY_TOLERANCE)
        check.pop("probabilities")
        record: dict[str, Any] = {
            "file": FILES[fmt],
            "sha256": file_sha256(built),
            "weights_sha256": file_sha256(folder / WEIGHTS),
            **info,
            "preprocessing": describe_preprocessing(model_bundle),
            "calibration": _calibration(model_bundle),
            "input_preprocess": input_preprocess.model_dump(mode="json"),
            "parity": check,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(fmt),
        }
        installs = {built: folder / FILES[fmt]}
        if fmt == "onnx" and model_bundle.task == "segmentation" and model_bundle.model.name == "fold_ensemble":
            record["members"] = _member_files(model_bundle, parity, example, staging, installs, folder)
        if int8:
            quantised = staging / INT8_FILE
            record["int8"] = _int8(built, quantised, model_bundle, parity, metric)
            installs[quantised] = folder / INT8_FILE
        install_export(installs, folder, record, fmt, model_bundle)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {**record, "folder": str(folder)}


def _staging(folder: Path) -> Path:
    """A fresh staging folder inside the bundle folder, where the files are built and checked before they move in.

    Raises:
        ExportError: the bundle folder is not writable.
    """
    try:
        return Path(tempfile.mkdtemp(prefix=".export-", dir=folder))
    except OSError as exc:
        raise ExportError(folder, f"cannot write into the bundle folder ({exc})", "export a writable copy") from exc


def _member_files(bundle, parity, example, staging: Path, installs: dict[Path, Path],
                  folder: Path) -> list[dict[str, Any]]:
    """A segmentation fold ensemble's members as ONNX files of their own (``model.member<k>.onnx``), each checked
    against its PyTorch member, so that the Segmenter can centre each member's map as it does in PyTorch and a
    profile can run some of them; adds them to ``installs`` and returns their records."""
    from medsight.export.graph import InferenceGraph
    from medsight.export.onnx_export import export_onnx
    from medsight.export.parity import check_parity, member_parity
    from medsight.export.precise import with_precise_norms

    records = []
    for k, member in enumerate(bundle.build_model().members):
        name = MEMBER_FILE.format(k=k)
        graph = InferenceGraph(with_precise_norms(member), task="segmentation")
        export_onnx(graph, example, staging / name, dynamic_spatial=True)
        check = check_parity(_onnx_runner(staging / name), member_parity(parity, member), tolerance=PARITY_TOLERANCE)
        check.pop("probabilities")
        records.append({"file": name, "member": k, "sha256": file_sha256(staging / name), "parity": check})
        installs[staging / name] = folder / name
    return records


def _export_detector(folder: Path, bundle, **options) -> dict[str, Any]:
    from medsight.export.detection_export import export_detector

    return {**export_detector(folder=folder, bundle=bundle, **options), "folder": str(folder)}


def _build(fmt: str, graph, example, path: Path, *, segmentation: bool):
    """Export ``graph`` to ``path``; returns its signature info and a runner for the checks."""
    import torch

    if fmt == "onnx":
        from medsight.export.onnx_export import export_onnx

        info = export_onnx(graph, example, path, dynamic_spatial=segmentation)
        return info, _onnx_runner(path)
    from medsight.export.torchscript_export import export_torchscript, load_torchscript

    info = export_torchscript(graph, example, path)
    module = load_torchscript(path)

    def run(batch):
        with torch.inference_mode():
            return module(torch.from_numpy(batch))[0].numpy()

    return info, run


def _onnx_runner(path: Path):
    import torch

    from medsight.inference.onnx_backend import onnx_session

    session = onnx_session(path, threads=torch.get_num_threads())
    return lambda batch: session.run(["probabilities"], {"image": batch})[0]


def _int8(source: Path, target: Path, bundle, parity, metric: str) -> dict[str, Any]:
    """Quantise, then compare the validation metric with PyTorch's; raises when it loses too much."""
    import numpy as np

    from medsight.export.onnx_export import quantize_int8
    from medsight.export.parity import check_parity, metric_value

    quantize_int8(source, target)
    check = check_parity(_onnx_runner(target), parity)
    reference = metric_value(bundle, parity, parity.reference, metric)
    value = metric_value(bundle, parity, check.pop("probabilities"), metric)
    if np.isnan(reference) or np.isnan(value):
        raise ExportError(
            f"int8 {metric}", f"undefined on {parity.source}", "choose another metric with --metric (e.g. accuracy)"
        )
    loss = reference - value
    result = {
        "file": INT8_FILE,
        "sha256": file_sha256(target),
        "quantisation": "onnxruntime.quantization.quantize_dynamic, weights QInt8",
        "metric": metric,
        "fp32": reference,
        "int8": value,
        "loss": loss,
        "loss_points": 100 * loss,
        "max_loss": MAX_INT8_LOSS,
        "samples": check["samples"],
        "max_abs_diff": check["max_abs_diff"],
    }
    if loss > MAX_INT8_LOSS:
        raise ExportError(
            "int8 quantisation",
            f"val {metric} drops from {reference:.4f} (PyTorch) to {value:.4f} (int8): a loss of "
            f"{100 * loss:.2f} points, above the {100 * MAX_INT8_LOSS:.0f} allowed, on {parity.source}",
            "nothing was written; use the fp32 export (drop --int8)",
        )
    return result


def _metric(task: str, metric: str | None) -> str:
    from medsight.metric_names import METRIC_KEYS

    allowed = ("dice",) if task == "segmentation" else METRIC_KEYS
    metric = metric or ("dice" if task == "segmentation" else "auc")
    if metric not in allowed:
        raise ConfigError(f"--metric {metric}", f"not a {task} metric", f"use one of {', '.join(allowed)}")
    return metric


def _calibration(bundle) -> dict[str, Any]:
    """How the exported graph applies the bundle's temperature, and why the bundle has one or not."""
    if bundle.task == "segmentation":
        return {"temperature": None, "in_graph": False,
                "how": "segmentation: no temperature scaling; 'probabilities' is the softmax of 'logits'"}
    if bundle.temperature is None:
        how = "no temperature scaling: 'probabilities' is the head (softmax or sigmoid) of 'logits' as they are"
    else:
        how = (f"the graph divides the logits by T = {bundle.temperature!r} before the "
               f"{bundle.model.head}, so 'probabilities' are calibrated and the threshold applies to them; "
               "'logits' is the network's output before the division")
    why = (bundle.threshold_choice.calibration or {}).get("reason", "not recorded (an older bundle)")
    return {"temperature": bundle.temperature, "in_graph": bundle.temperature is not None, "how": how, "why": why}
