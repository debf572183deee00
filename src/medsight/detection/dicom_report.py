"""Detect on DICOM images and write the findings as a DICOM SR (:mod:`medsight.io.sr_boxes`) in their study.

A 2D detector runs on each image of the series (each file: a study of radiographs, or the slices of a CT one by
one); a 3D detector on the series read as one volume. The findings are the boxes at or above the bundle's shipped
threshold (:meth:`Detector.findings`), and the report records that threshold. ``medsight pacs run`` and
``pacs watch`` call this for every series they retrieve.

Example:
    >>> detector = Detector.from_bundle("runs/fractures/model")
    >>> detect_dicom(detector, Path("study/series_1"), Path("out/sr.dcm"))
"""

from __future__ import annotations

from pathlib import Path

from medsight.errors import DatasetError
from medsight.inference.detector import Detector
from medsight.io.sr_boxes import write_detection_sr
from medsight.sample import Sample


def detect_dicom(detector: Detector, source: Path, out: Path, *, series_uid: str | None = None) -> Path:
    """Run ``detector`` on the DICOM image(s) at ``source`` and write their findings as one SR at ``out``.

    Args:
        detector: the detection bundle's Detector.
        source: a DICOM file, or a folder holding one series (``series_uid`` picks one where it holds several).
        out: the SR file to write.

    Raises:
        DatasetError: no DICOM image at ``source``.
        InvalidImageError: an image of the wrong dimensionality for the model.
        UnsupportedFileError, DetectionReportError: as :func:`~medsight.io.sr_boxes.write_detection_sr`.
    """
    images = dicom_images(Path(source), spatial_dims=detector.bundle.spatial_dims, series_uid=series_uid)
    findings = [detector.findings(boxes) for boxes in detector.predict(images)]
    return write_detection_sr(images, findings, out, label_names=detector.label_names,
                              model=detector.bundle.model.name, version=detector.bundle.version,
                              score_threshold=detector.score_threshold)


def dicom_images(source: Path, *, spatial_dims: int, series_uid: str | None = None) -> list[Sample]:
    """The inputs of a ``spatial_dims`` model at ``source``: each file of the series for 2D, the volume for 3D.

    Raises:
        DatasetError: no DICOM image at ``source``.
    """
    from medsight.io import read_image
    from medsight.io.dicom import is_dicom_file
    from medsight.io.dicom_series import read_dicom_series

    if not source.is_dir():
        return [read_image(source)]
    if spatial_dims == 3:
        return [read_dicom_series(source, series_uid=series_uid)]
    files = sorted(f for f in source.rglob("*") if f.is_file() and is_dicom_file(f))
    images = [read_image(f) for f in files]
    images = [i for i in images if series_uid is None or i.meta.get("SeriesInstanceUID") == series_uid]
    if not images:
        raise DatasetError(source, f"holds no DICOM image{f' of series {series_uid}' if series_uid else ''}",
                           "pass the folder the series was retrieved into")
    return images
