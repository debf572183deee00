"""Write a detector's findings as a DICOM Structured Report (TID 1500) in the source study, and read the boxes back.

The report is the Comprehensive 3D SR of :func:`medsight.io.sr_writer.report_document` (the source study's patient
and study modules, a new series ``medsight <model> detection``, the Image Library, the device observer), holding one
measurement group per finding:

* **2D images**: a TID 1410 *Planar ROI* group whose *Image Region* (DCM 111030) is an SCOORD ``POLYLINE`` of the
  box's four corners, closed (five points, the first repeated), referencing the source image's SOP instance.
  SCOORD has no rectangle. Its coordinates are ``(column, row)`` image coordinates with sub-pixel resolution whose
  origin is the top-left corner of the top-left pixel (PS3.3 C.18.6.1.2; the centre of that pixel is
  ``(0.5, 0.5)``). That is exactly medsight's pixel-edge convention (:mod:`medsight.boxes`), so the box
  ``[r1, c1, r2, c2]`` is written as ``(c1, r1), (c2, r1), (c2, r2), (c1, r2), (c1, r1)`` with no offset.
* **Volumes** (a series, or an enhanced multi-frame file): a TID 1411 *Volumetric ROI* group whose *Volume
  Surface* (DCM 121231) is two SCOORD3D ``POLYGON`` s, the box's faces at its first and last slice edge (the volume
  is the prism between them), in patient coordinates (LPS, mm) of the series' Frame of Reference, with the source
  series as *Source Series for Segmentation*. A voxel index ``i`` is a voxel centre (ImagePositionPatient is the
  centre of the first voxel), so a box edge ``e`` (pixel-edge convention) sits at index ``e - 0.5``:
  ``LPS = diag(-1, -1, 1) · (A · (e - 0.5))`` with ``A`` the Sample's RAS affine. (``Boxes.world`` maps ``e``
  itself, half a voxel away; the SR uses DICOM's geometry.)
* in each group: the finding type (*Finding*) coded as the classification SR codes a class name
  (:func:`~medsight.io.sr_writer.finding_code`: SNOMED CT where the name maps, e.g. *fracture* 125605004, else
  ``99MEDSIGHT`` with the name as meaning), the score as a numeric measurement *Certainty of Finding* (DCM 111012,
  UCUM ``1``: the detector's score in [0, 1], not a calibrated probability), and the algorithm (*medsight <model>*,
  the version, the parameter ``score_threshold=<the bundle's threshold>``).

A first TID 1501 group says that detection ran (*Summary of Detections* DCM 111064 = *Succeeded* DCM 111222) with
the algorithm, so a report without findings still records the model, its version and threshold: the detector ran
on the listed images and found nothing at or above its threshold. GraphicData is stored as 32-bit floats (VR FL),
so coordinates come back within float32 rounding.

Example:
    >>> image = read_image("wrist.dcm")
    >>> boxes = detector.findings(detector.predict([image])[0])
    >>> write_detection_sr([image], [boxes], Path("wrist_sr.dcm"), label_names=["fracture"], model="retinanet",
    ...                    version="run-3", score_threshold=detector.score_threshold)
    >>> read_detection_sr(Path("wrist_sr.dcm"), label_names=["fracture"]).boxes[image.meta["SOPInstanceUID"]]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsight.boxes import Boxes
from medsight.errors import MedsightError, UnreadableFileError, UnsupportedFileError
from medsight.io.sr_writer import (
    finding_code,
    read_sr,
    report_document,
    save_dataset,
    source_datasets,
    text_item,
)
from medsight.sample import Sample

#: DCM concept *Algorithm Parameters*: holds ``score_threshold=<value>``
ALGORITHM_PARAMETERS = "111002"
THRESHOLD_PARAMETER = "score_threshold="
#: LPS = RAS with the first two axes negated
RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])


class DetectionReportError(MedsightError):
    """Findings that cannot be written: scores outside [0, 1], an unknown label, a box outside its image, images of
    another study, or a report that names a class the caller does not know."""


@dataclass
class DetectionReport:
    """What :func:`read_detection_sr` reads: the boxes per referenced image (SOPInstanceUID) or volume
    (SeriesInstanceUID), scored, labels indexing the caller's ``label_names``, in the image's index space."""

    study_uid: str
    model: str | None
    version: str | None
    score_threshold: float | None
    boxes: dict[str, Boxes] = field(default_factory=dict)


def write_detection_sr(images: Sequence[Sample], findings: Sequence[Boxes], path: Path, *, label_names: list[str],
                       model: str, version: str, score_threshold: float | None = None) -> Path:
    """Write ``findings[i]`` (scored boxes in ``images[i]``'s index space) as one TID 1500 SR at ``path``.

    Args:
        images: the source images, read from DICOM: 2D images (one file each, of one study), or one volume.
        findings: the boxes to report for each image (already at or above the threshold).
        label_names: the bundle's class names (``Boxes.labels`` index them).
        model, version: the bundle's model name and version.
        score_threshold: the bundle's operating threshold, recorded as an algorithm parameter.

    Raises:
        UnsupportedFileError: an image not read from DICOM, a 2D frame of a multi-frame file, a volume without a
            Frame of Reference.
        DetectionReportError: see the class; nothing is written.
    """
    _check(images, findings, label_names, path)
    sources = [header for image in images for header in source_datasets(image)]
    algorithm = _algorithm(model, version, score_threshold)
    groups = [_summary(model, algorithm)]
    for image, boxes, header in zip(images, findings, _headers_per_image(images, sources), strict=True):
        for k in range(len(boxes)):
            name = label_names[int(boxes.labels[k])]
            common = {"tracking_identifier": _tracking(model, f"finding {len(groups)}"),
                      "finding_type": finding_code(name), "algorithm_id": algorithm,
                      "measurements": [_score(float(boxes.scores[k]))]}
            groups.append(_volume_group(image, boxes.corners[k], header, common) if image.spatial_dims == 3
                          else _planar_group(boxes.corners[k], header, common))
    return save_dataset(report_document(sources, groups, model=model, kind="detection"), path)


def _summary(model: str, algorithm):
    """The TID 1501 group saying that detection ran (*Summary of Detections*: *Succeeded*), with the algorithm."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(model, "detection"), algorithm_id=algorithm,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=codes.DCM.SummaryOfDetections,
                                                             value=codes.DCM.Succeeded)])


def _headers_per_image(images: Sequence[Sample], sources: list) -> list:
    """The header each image's regions reference: a 2D image's own file, a volume's first slice."""
    if images[0].spatial_dims == 3:
        return [sources[0]]
    return sources


def _planar_group(corners: np.ndarray, header, common: dict):
    import highdicom as hd

    r1, c1, r2, c2 = (float(v) for v in corners)
    polyline = np.array([[c1, r1], [c2, r1], [c2, r2], [c1, r2], [c1, r1]])
    region = hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=polyline,
                               source_image=hd.sr.SourceImageForRegion.from_source_image(header))
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(referenced_region=region, **common)


def _volume_group(image: Sample, corners: np.ndarray, header, common: dict):
    import highdicom as hd

    k1, r1, c1, k2, r2, c2 = (float(v) for v in corners)
    ring = [(r1, c1), (r1, c2), (r2, c2), (r2, c1), (r1, c1)]
    faces = [to_patient(image.affine, np.array([[k, r, c] for r, c in ring])) for k in (k1, k2)]
    surface = hd.sr.VolumeSurface(graphic_type=hd.sr.GraphicTypeValues3D.POLYGON, graphic_data=faces,
                                  frame_of_reference_uid=str(header.FrameOfReferenceUID),
                                  source_series=hd.sr.SourceSeriesForSegmentation(str(header.SeriesInstanceUID)))
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(referenced_volume_surface=surface, **common)


def to_patient(affine: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``(N, 3)`` LPS millimetres of ``(N, 3)`` voxel-edge coordinates (the box convention) of a volume."""
    index = np.c_[np.asarray(edges, np.float64) - 0.5, np.ones(len(edges))]
    return (np.asarray(affine, np.float64) @ index.T).T[:, :3] * RAS_TO_LPS


def from_patient(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The inverse of :func:`to_patient`: voxel-edge coordinates of ``(N, 3)`` LPS points."""
    ras = np.c_[np.asarray(points, np.float64) * RAS_TO_LPS, np.ones(len(points))]
    return (np.linalg.inv(np.asarray(affine, np.float64)) @ ras.T).T[:, :3] + 0.5


def _tracking(model: str, what: str):
    import highdicom as hd
    from pydicom.uid import generate_uid

    return hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"medsight {model} {what}")


def _algorithm(model: str, version: str, score_threshold: float | None):
    import highdicom as hd

    parameters = None if score_threshold is None else [f"{THRESHOLD_PARAMETER}{float(score_threshold)!r}"]
    return hd.sr.AlgorithmIdentification(name=f"medsight {model}", version=version, parameters=parameters)


def _score(value: float):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.sr.Measurement(name=codes.DCM.CertaintyOfFinding, value=value,
                             unit=hd.sr.CodedConcept(value="1", scheme_designator="UCUM", meaning="no units"))


def _check(images: Sequence[Sample], findings: Sequence[Boxes], label_names: list[str], path: Path) -> None:
    """Refuse what cannot be reported, before anything is written."""
    if not images or len(images) != len(findings):
        raise DetectionReportError(path, f"{len(images)} images but {len(findings)} sets of boxes",
                                   "pass one Boxes per image, in the same order")
    dims = {image.spatial_dims for image in images}
    if dims == {3} and len(images) > 1 or len(dims) > 1:
        raise DetectionReportError(path, "a report covers 2D images or one volume, not several volumes or a mix",
                                   "write one report per volume (series)")
    studies = {image.meta.get("StudyInstanceUID") for image in images}
    if len(studies) > 1:
        raise DetectionReportError(path, f"the images belong to {len(studies)} studies",
                                   "write one report per study: the SR joins its source study")
    for image, boxes in zip(images, findings, strict=True):
        _check_image(image, path)
        _check_boxes(image, boxes, label_names, path)


def _check_image(image: Sample, path: Path) -> None:
    where = image.meta.get("path", "image")
    if image.spatial_dims == 2 and (image.meta.get("n_frames") or 1) > 1:
        raise UnsupportedFileError(where, "is one frame of a multi-frame file",
                                   "detect on the whole file as a volume, or on single-frame images")
    if image.spatial_dims == 3 and not image.meta.get("FrameOfReferenceUID"):
        raise UnsupportedFileError(where, "has no FrameOfReferenceUID, so boxes cannot be placed in the patient",
                                   "read a series whose files record their Frame of Reference")


def _check_boxes(image: Sample, boxes: Boxes, label_names: list[str], path: Path) -> None:
    where = f"{path} ({image.meta.get('path', 'image')})"
    if len(boxes) and boxes.spatial_dims != image.spatial_dims:
        raise DetectionReportError(where, f"{boxes.spatial_dims}D boxes on a {image.spatial_dims}D image",
                                   "pass the boxes the detector predicted for this image")
    scores = boxes.scores
    if scores is None or not all(math.isfinite(s) and 0.0 <= s <= 1.0 for s in scores):
        raise DetectionReportError(where, "boxes without scores, or a score outside [0, 1]",
                                   "pass the Detector's scored boxes (Detector.findings)")
    unknown = sorted({int(v) for v in boxes.labels} - set(range(len(label_names))))
    if unknown:
        raise DetectionReportError(where, f"labels {unknown} are not indices of label_names {label_names}",
                                   "pass the bundle's label_names")
    d = image.spatial_dims
    inside = (boxes.corners[:, :d] >= 0).all() and (boxes.corners[:, d:] <= image.spatial_shape).all()
    if len(boxes) and not (inside and (boxes.extents() > 0).all()):
        raise DetectionReportError(where, f"a box lies outside the image {image.spatial_shape} or has no area",
                                   "clip the boxes to the image (Detector.predict does)")


def read_detection_sr(path: Path, *, label_names: list[str], volume: Sample | None = None) -> DetectionReport:
    """Read a report of :func:`write_detection_sr` back to boxes.

    Args:
        path: the SR file.
        label_names: the class names the labels index (the bundle's).
        volume: for a report on a volume, that volume (its affine maps the millimetres back to voxels).

    Returns:
        A :class:`DetectionReport`; for 2D images every image of the evidence has an entry (empty Boxes where
        nothing was found), for a volume its SeriesInstanceUID.

    Raises:
        UnreadableFileError: not a DICOM SR holding a TID 1500 report.
        DetectionReportError: a class not in ``label_names``; a volumetric report without ``volume`` or for
            another series.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sr = read_sr(path)
    report = sr.content
    if not isinstance(report, hd.sr.MeasurementReport):
        raise UnreadableFileError(path, "holds no TID 1500 measurement report", "pass a report written by medsight")
    planar = report.get_planar_roi_measurement_groups()
    volumetric = report.get_volumetric_roi_measurement_groups()
    device = report.get_observer_contexts(observer_type=codes.DCM.Device)
    found = DetectionReport(study_uid=str(sr.StudyInstanceUID),
                            model=device[0].observer_identifying_attributes.model_name if device else None,
                            version=None, score_threshold=None)
    rows: dict[str, list] = {}
    if volume is not None:
        rows[str(volume.meta.get("SeriesInstanceUID"))] = []
        for group in volumetric:
            rows[_series_of(group, volume, path)].append(_row(group, _volume_corners(group, volume), label_names,
                                                              path))
    else:
        if volumetric:
            raise DetectionReportError(path, "reports boxes in a volume",
                                       "pass volume= (the series it refers to, read_dicom_series)")
        rows.update({str(uid): [] for _, _, uid, _ in sr.get_evidence(current_procedure_only=True)})
        for group in planar:
            region = group.roi
            uid = str(region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            rows.setdefault(uid, []).append(_row(group, _planar_corners(region), label_names, path))
    dims = 2 if volume is None else 3
    found.boxes = {uid: _boxes(found_rows, dims) for uid, found_rows in rows.items()}
    _read_algorithm(found, report.get_image_measurement_groups())
    return found


def _planar_corners(region) -> np.ndarray:
    points = np.asarray(region.value, np.float64)  # (column, row) pairs
    return np.array([points[:, 1].min(), points[:, 0].min(), points[:, 1].max(), points[:, 0].max()])


def _volume_corners(group, volume: Sample) -> np.ndarray:
    points = np.concatenate([np.asarray(item.value, np.float64) for item in group.roi
                             if getattr(item, "ValueType", None) == "SCOORD3D"])
    edges = from_patient(volume.affine, points)
    return np.concatenate([edges.min(axis=0), edges.max(axis=0)])


def _series_of(group, volume: Sample, path: Path) -> str:
    """The series a volumetric group refers to, which must be ``volume``'s."""
    series = [str(item.value) for item in group.roi if getattr(item, "ValueType", None) == "UIDREF"]
    expected = str(volume.meta.get("SeriesInstanceUID"))
    if series != [expected]:
        raise DetectionReportError(path, f"refers to series {series}, not the volume's {expected}",
                                   "pass the series the report was written for")
    return expected


def _row(group, corners: np.ndarray, label_names: list[str], path: Path) -> tuple[np.ndarray, int, float]:
    from pydicom.sr.codedict import codes

    name = group.finding_type.meaning if group.finding_type is not None else None
    if name not in label_names:
        raise DetectionReportError(path, f"reports the class {name!r}, not one of {label_names}",
                                   "pass the label_names of the bundle that wrote it")
    (score,) = group.get_measurements(name=codes.DCM.CertaintyOfFinding)
    return corners, label_names.index(name), float(score.value)


def _boxes(rows: list, dims: int) -> Boxes:
    if not rows:
        return Boxes.empty(dims, scored=True)
    corners, labels, scores = zip(*rows, strict=True)
    return Boxes(np.stack(corners), list(labels), list(scores))


def _read_algorithm(found: DetectionReport, groups: list) -> None:
    """The version and the score threshold, from the summary group's algorithm identification."""
    from medsight.io.sr_writer import ALGORITHM_VERSION

    if not groups:
        raise DetectionReportError(found.study_uid, "the report has no detection summary group",
                                   "pass a detection report written by medsight")
    found.version = text_item(groups[0][0], ALGORITHM_VERSION)
    parameter = text_item(groups[0][0], ALGORITHM_PARAMETERS) or ""
    if parameter.startswith(THRESHOLD_PARAMETER):
        found.score_threshold = float(parameter.removeprefix(THRESHOLD_PARAMETER))
