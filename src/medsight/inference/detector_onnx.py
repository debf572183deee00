"""A detection bundle's ONNX export as the :class:`~medsight.inference.detector.Detector`'s network.

``medsight export RUN/model --format onnx`` writes the detector's network (image -> the raw head outputs of every
anchor) as ``model.onnx``; box decoding, the score floor, NMS and the box limit stay in Python, in the Detector's
own post-processing, so both backends give their head outputs to the same code. The graph's contract:

* input ``image``: ``(batch, C, *size)`` float32, the bundle's preprocessing done (:func:`fit_sample`) and each
  axis padded at its end with zeros to a multiple of the coarsest stride (MONAI's ``preprocess_images``);
* output ``classification``: ``(batch, anchors, classes)`` logits (a box's score is their sigmoid);
* output ``box_regression``: ``(batch, anchors, 2 * D)`` MONAI ``BoxCoder`` offsets from each anchor;
* anchor order (:data:`ANCHOR_ORDER`): MONAI's own (``RetinaNetDetector._reshape_maps``).

:func:`export_mismatch` is the check that the export in ``export.json`` was made for this bundle's detection
settings (its weights are checked by their SHA-256 as for every export).

Example:
    >>> heads = OnnxHeads(Path("runs/fractures/model/model.onnx"))
    >>> classification, box_regression = heads(padded_images)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medsight.bundle import Bundle

#: the graph's outputs, in order
HEAD_OUTPUTS = ("classification", "box_regression")
#: how the anchors of the outputs' second axis are ordered
ANCHOR_ORDER = ("feature levels from the finest (stride 4 by default) to the coarsest; within a level, its "
                "feature-map positions in C order (the last spatial axis fastest); at each position, the level's "
                "anchor shapes in the order listed")
#: the version of this contract, recorded in export.json
LAYOUT_VERSION = 1


class OnnxHeads:
    """``model.onnx`` of a detection bundle on ONNX Runtime (CPU): padded images -> the two head outputs.

    Raises:
        BundleError: ONNX Runtime cannot load the file, or the graph lacks the input or the outputs above.
    """

    def __init__(self, path: str | Path, *, threads: int = 0) -> None:
        from medsight.errors import BundleError
        from medsight.inference.onnx_backend import onnx_session

        self.session = onnx_session(path, threads=threads)
        outputs = [o.name for o in self.session.get_outputs()]
        inputs = [i.name for i in self.session.get_inputs()]
        if inputs != ["image"] or any(name not in outputs for name in HEAD_OUTPUTS):
            raise BundleError(path, f"is not a detection export (inputs {inputs}, outputs {outputs}; a detector's "
                              f"are ['image'] and {list(HEAD_OUTPUTS)})", "export the bundle again")

    def __call__(self, images) -> tuple[Any, Any]:
        """``(classification, box_regression)`` torch tensors for a padded ``(B, C, *spatial)`` batch."""
        import torch

        batch = np.ascontiguousarray(images.cpu().numpy() if hasattr(images, "cpu") else images, np.float32)
        classification, box_regression = self.session.run(list(HEAD_OUTPUTS), {"image": batch})
        return torch.from_numpy(classification), torch.from_numpy(box_regression)


def export_settings(bundle: Bundle) -> dict[str, Any]:
    """What an ONNX export of ``bundle`` depends on beyond its weights (export.json's ``detection.made_for``)."""
    settings = bundle.detection
    return {"layout_version": LAYOUT_VERSION, "class_names": list(bundle.label_names),
            "input_size": [int(n) for n in bundle.preprocess.size], "channels": bundle.preprocess.channels,
            "anchor_sizes": [list(map(float, s)) for s in settings.anchor_sizes],
            "aspect_ratios": [float(r) for r in settings.aspect_ratios]}


def export_mismatch(record: dict[str, Any], bundle: Bundle) -> str | None:
    """Why the ONNX ``record`` of ``export.json`` does not fit ``bundle``'s detection settings; None when it does."""
    made_for = (record.get("detection") or {}).get("made_for")
    if not isinstance(made_for, dict):
        return f"{record.get('file', 'model.onnx')} is not recorded as a detection export"
    expected = export_settings(bundle)
    for key, value in expected.items():
        if made_for.get(key) != value:
            return (f"export.json records {key} {made_for.get(key)} for {record.get('file', 'model.onnx')}, "
                    f"the bundle {value}")
    return None


__all__ = ["ANCHOR_ORDER", "HEAD_OUTPUTS", "LAYOUT_VERSION", "OnnxHeads", "export_mismatch", "export_settings"]
