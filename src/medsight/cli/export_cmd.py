"""``medsight export BUNDLE --format onnx|torchscript [--int8] [--data PATH]``"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from medsight.cli.errors import reports_errors


@reports_errors
def export(
    bundle: Path = typer.Argument(..., help="A model folder written by training (RUN_DIR/model)."),
    fmt: str = typer.Option(..., "--format", "-f", help="onnx or torchscript."),
    int8: bool = typer.Option(False, "--int8", help="Also write model.int8.onnx (dynamic int8; ONNX only)."),
    data: str | None = typer.Option(
        None, help="Data for the parity check; default: the training data recorded in the bundle."
    ),
    metric: str | None = typer.Option(None, help="Validation metric for the int8 check (default auc; dice)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Export a bundle and check it against PyTorch on real validation images."""
    from medsight.export import export_bundle

    result = export_bundle(bundle=bundle, fmt=fmt, int8=int8, data=data, metric=metric, progress=progress)
    typer.echo(summary(result))


def summary(result: dict[str, Any]) -> str:
    """The lines the command prints: files, parity, and the int8 metric loss."""
    parity = result["parity"]
    opset = f", opset {result['opset']}" if "opset" in result else ""
    if "detection" in result:
        return _detection_summary(result, opset)
    lines = [
        f"wrote {Path(result['folder']) / result['file']}{opset}",
        f"parity: max |p - p_torch| = {parity['max_abs_diff']:.2e} (limit {parity['tolerance']:g}) "
        f"on {parity['source']}, batch sizes {parity['batch_sizes']}"
        + (f", input shapes {parity['input_shapes']}" if len(parity["input_shapes"]) > 1 else ""),
    ]
    if "int8" in result:
        q = result["int8"]
        lines += [
            f"wrote {Path(result['folder']) / q['file']}",
            f"int8: val {q['metric']} {q['fp32']:.4f} -> {q['int8']:.4f}, loss {q['loss_points']:.2f} points "
            f"(limit {100 * q['max_loss']:.0f}); max |p - p_torch| = {q['max_abs_diff']:.2e}",
        ]
    lines.append(f"recorded in {Path(result['folder']) / 'export.json'}")
    return "\n".join(lines)


def _detection_summary(result: dict[str, Any], opset: str) -> str:
    """A detection export: the head outputs' largest differences and the boxes compared."""
    parity, folder = result["parity"], Path(result["folder"])
    heads = ", ".join(f"{name} {o['max_abs_diff']:.2e} (limit {o['tolerance']:.2e})"
                      for name, o in parity["heads"].items())
    boxes = parity["boxes"]
    return "\n".join([
        f"wrote {folder / result['file']}{opset}",
        f"parity: max |head output - torch|: {heads}, on {parity['source']}",
        f"boxes: {boxes['matched']} of {boxes['torch_boxes']} PyTorch boxes matched by the ONNX ones (IoU >= "
        f"{boxes['min_iou']:.6f}, score difference <= {boxes['max_score_diff']:.2e}), {len(boxes['ties'])} tie(s)",
        f"recorded in {folder / 'export.json'}"])
