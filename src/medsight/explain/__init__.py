"""Explanations for classifiers: Grad-CAM, Grad-CAM++, occlusion, and how faithful they are.

``explain_png`` is what the service's ``/v1/explain`` calls.
"""

from medsight.explain.cam import METHODS, capture, gradcam, occlusion, saliency
from medsight.explain.faithfulness import deletion_insertion
from medsight.explain.run import (
    explain_files,
    explain_png,
    explain_sample,
    faithfulness_report,
    heatmap_png,
    overlay_png,
)

__all__ = [
    "METHODS", "capture", "deletion_insertion", "explain_files", "explain_png", "explain_sample",
    "faithfulness_report", "gradcam", "heatmap_png", "occlusion", "overlay_png", "saliency",
]
