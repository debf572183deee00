"""ONNX export (fp32) and dynamic int8 quantisation of an :class:`~medsight.export.graph.InferenceGraph`.

The graph is exported with PyTorch's ``torch.export``-based exporter (``dynamo=True``, the
default of ``torch.onnx.export`` since PyTorch 2.9; it needs ``onnxscript``) at opset
:data:`OPSET`, weights embedded in the one ``.onnx`` file. The batch axis is dynamic; for
segmentation the spatial axes are too. The legacy TorchScript-based exporter also handles
every medsight network but is deprecated, so it is not used.

int8 is ONNX Runtime's dynamic quantisation (``quantize_dynamic``: int8 weights, activations
quantised on the fly; Conv becomes ConvInteger, Gemm/MatMul become MatMulInteger).

Example:
    >>> info = export_onnx(graph, torch.zeros(2, 1, 64, 64), Path("model.onnx"), dynamic_spatial=False)
    >>> info["opset"], info["inputs"][0]["shape"]
    (20, ['batch', 1, 64, 64])
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from medsight.export.errors import ExportError
from medsight.export.graph import INPUT_NAME, OUTPUT_NAMES, InferenceGraph

#: The ONNX opset of every export (torch 2.13's default for the dynamo exporter).
OPSET = 20
SPATIAL_NAMES = {2: ("height", "width"), 3: ("depth", "height", "width")}


def export_onnx(graph: InferenceGraph | torch.nn.Module, example: torch.Tensor, path: Path, *, dynamic_spatial: bool,
                output_names: Sequence[str] = OUTPUT_NAMES,
                output_axes: dict[int, str] | None = None) -> dict[str, Any]:
    """Write ``graph`` to ``path`` as ONNX; returns the opset, exporter and input/output signatures.

    Args:
        graph: the module to export (eval mode).
        example: an input batch of the exported shape (a batch of 2 or more, so the batch axis
            is not specialised to 1).
        path: the ``.onnx`` file to write.
        dynamic_spatial: make the spatial axes dynamic too (segmentation, detection).
        output_names: the graph's outputs, in the order it returns them.
        output_axes: the outputs' dynamic axes and their names; None: the batch, and with
            ``dynamic_spatial`` the input's spatial axes (a segmenter's maps).

    Raises:
        ExportError: the exporter cannot trace the network.
    """
    spatial = example.ndim - 2
    dims: dict[int, Any] = {0: torch.export.Dim("batch", min=1)}
    if dynamic_spatial:
        dims.update({2 + i: torch.export.Dim.DYNAMIC for i in range(spatial)})
    try:
        with _quiet():
            torch.onnx.export(
                graph, (example,), str(path), dynamo=True, opset_version=OPSET, external_data=False, verbose=False,
                input_names=[INPUT_NAME], output_names=list(output_names), dynamic_shapes=(dims,),
            )
    except Exception as exc:  # the exporter raises many types; all mean "this network did not export"
        raise ExportError(
            f"model {type(graph.network).__name__}",
            f"torch.onnx.export failed ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})",
            "try --format torchscript, or report the model and this message",
        ) from exc
    return _name_axes(path, spatial, dynamic_spatial, output_axes)


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation of the ONNX model ``source`` into ``target``.

    The exporter's intermediate shape annotations are dropped first: ONNX Runtime's quantiser
    re-infers shapes and rejects the transposed Gemm weights they describe otherwise.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(source))
    del model.graph.value_info[:]
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch, _quiet():
        plain = Path(scratch) / "plain.onnx"
        onnx.save(model, str(plain))
        quantize_dynamic(str(plain), str(target), weight_type=QuantType.QInt8)


def _name_axes(path: Path, spatial: int, dynamic_spatial: bool, output_axes: dict[int, str] | None) -> dict[str, Any]:
    """Give the dynamic axes readable names in the file and return the signature."""
    import onnx

    model = onnx.load(str(path))
    axes = {0: "batch"}
    if dynamic_spatial:
        axes.update({2 + i: name for i, name in enumerate(SPATIAL_NAMES[spatial])})
    for value in model.graph.input:
        _rename_axes(value, axes)
    if output_axes is None:  # segmentation outputs keep the input's spatial size
        output_axes = axes if dynamic_spatial else {0: "batch"}
    for value in model.graph.output:
        _rename_axes(value, output_axes)
    onnx.save(model, str(path))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return {
        "opset": opset,
        "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
        "inputs": [_signature(v) for v in model.graph.input],
        "outputs": [_signature(v) for v in model.graph.output],
    }


def _rename_axes(value, axes: dict[int, str]) -> None:
    dims = value.type.tensor_type.shape.dim
    for axis, name in axes.items():
        dims[axis].dim_param = name


def _signature(value) -> dict[str, Any]:
    shape = [d.dim_param if d.dim_param else int(d.dim_value) for d in value.type.tensor_type.shape.dim]
    return {"name": value.name, "shape": shape, "dtype": "float32"}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's and quantiser's progress logs and deprecation warnings."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "root")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
