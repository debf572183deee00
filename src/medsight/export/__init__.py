"""Export a bundle to ONNX (fp32, optionally int8) or TorchScript, checked against PyTorch on real images.

Example:
    >>> from medsight.export import export_bundle
    >>> export_bundle(bundle="runs/demo/model", fmt="onnx", int8=True)["parity"]["max_abs_diff"]
"""

from medsight.export.errors import ExportError
from medsight.export.exporter import FORMATS, MAX_INT8_LOSS, PARITY_TOLERANCE, export_bundle
from medsight.export.onnx_export import OPSET

__all__ = ["FORMATS", "MAX_INT8_LOSS", "OPSET", "PARITY_TOLERANCE", "ExportError", "export_bundle"]
