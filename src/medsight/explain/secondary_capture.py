"""A Grad-CAM overlay written as a DICOM Secondary Capture in the source image's study.

The classifier bundle explains the image (:func:`medsight.explain.run.explain_sample`), the overlay
PNG is drawn as :func:`medsight.explain.run.overlay_png` draws it, and
:func:`medsight.io.sc_writer.write_secondary_capture` stores it in a new series of the source study.

Example:
    >>> image = read_image("chest.dcm")
    >>> gradcam_secondary_capture(Path("runs/demo/model"), image, Path("chest_gradcam.dcm"))
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from medsight.bundle import load_bundle
from medsight.errors import ConfigError
from medsight.explain.cam import METHODS
from medsight.explain.run import explain_sample, overlay_png
from medsight.io.sc_writer import write_secondary_capture
from medsight.io.sr_writer import source_datasets
from medsight.sample import Sample


def gradcam_secondary_capture(bundle_dir: Path, image: Sample, path: Path, *, method: str = "gradcam") -> Path:
    """Explain ``image`` with the classifier bundle and write the heatmap overlay as a Secondary Capture.

    A volume read for a 2D model is explained on its middle slice; a 3D model sees the whole volume and the
    overlay shows its middle slice. The series description names the explained class and the method; the
    model version recorded is the bundle's creation time stamp.

    Raises:
        BundleError: the bundle is missing or incomplete.
        ConfigError: the bundle is not a classifier, or the method is unknown.
        UnsupportedFileError: the image was not read from DICOM.
    """
    if method not in METHODS:
        raise ConfigError(f"method={method}", "unknown explanation method", f"choose one of: {', '.join(METHODS)}")
    source_datasets(image)  # a non-DICOM image fails here, before the model runs
    bundle = load_bundle(bundle_dir)
    model = bundle.build_model()
    sample = middle_slice(image) if image.spatial_dims == 3 and bundle.spatial_dims == 2 else image
    result = explain_sample(bundle, model, sample, method=method)
    heat = result["heat"]
    if sample.spatial_dims == 3:
        sample, heat = middle_slice(sample), heat[heat.shape[0] // 2]
    rgb = np.asarray(Image.open(io.BytesIO(overlay_png(sample, heat))).convert("RGB"))
    description = f"medsight {method} {result['target']}"
    return write_secondary_capture(rgb, image, path, description=description, model=bundle.model.name,
                                   version=str(bundle.provenance.get("created", "unknown")))


def middle_slice(image: Sample) -> Sample:
    """The middle slice ``(C, R, C)`` of a volume ``(C, S, R, C)``, with the in-plane spacing."""
    return Sample(np.ascontiguousarray(image.array[:, image.array.shape[1] // 2]), spacing=tuple(image.spacing[1:]),
                  meta=dict(image.meta))
