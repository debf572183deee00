"""TorchScript export of an :class:`~medsight.export.graph.InferenceGraph`.

The graph is traced (``torch.jit.trace``), frozen (weights become constants, so outputs
need no ``torch.no_grad``) and saved as a TorchScript archive: a zip that
``torch.jit.load`` reads without unpickling arbitrary Python objects. It returns the tuple
``(probabilities, logits)``; the batch axis (and, for segmentation, the spatial axes) stay
free as long as the network's Python code does not branch on the shape.

Example:
    >>> info = export_torchscript(graph, torch.zeros(2, 1, 64, 64), Path("model.torchscript.pt"))
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from medsight.export.errors import ExportError
from medsight.export.graph import INPUT_NAME, OUTPUT_NAMES, InferenceGraph


def export_torchscript(graph: InferenceGraph, example: torch.Tensor, path: Path) -> dict[str, Any]:
    """Trace ``graph`` on ``example`` and save it to ``path``; returns the exporter and signatures.

    Raises:
        ExportError: the network cannot be traced.
    """
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.freeze(torch.jit.trace(graph.eval(), (example,), check_trace=False))
            torch.jit.save(traced, str(path))
    except Exception as exc:  # tracing raises many types; all mean "this network did not trace"
        raise ExportError(
            f"model {type(graph.network).__name__}",
            f"torch.jit.trace failed ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})",
            "try --format onnx, or report the model and this message",
        ) from exc
    shape = ["batch", *example.shape[1:]]
    return {
        "exporter": f"torch.jit.trace + torch.jit.freeze, torch {torch.__version__}",
        "inputs": [{"name": INPUT_NAME, "shape": shape, "dtype": "float32"}],
        "outputs": [{"name": name, "position": i, "dtype": "float32"} for i, name in enumerate(OUTPUT_NAMES)],
    }


def load_torchscript(path: Path):
    """The saved TorchScript module, on the CPU, in eval mode."""
    return torch.jit.load(str(path), map_location="cpu").eval()
