"""DICOM SR (TID 1500) of detection findings: the boxes and UIDs round trip, the coordinates follow DICOM's
conventions (checked against highdicom's own image-to-patient transform), dciodvfy passes it, bad input is refused
with nothing written, and no patient field reaches a message."""

from __future__ import annotations

import logging
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from test_dicom_conformance import DEIDENTIFIED, INHERITED, dciodvfy, unexplained, verify  # noqa: F401 (fixture)

from medsight.boxes import Boxes
from medsight.errors import MedsightError, UnreadableFileError, UnsupportedFileError
from medsight.io import read_image
from medsight.io.anonymize import anonymize_tree
from medsight.io.dicom_series import read_dicom_series
from medsight.io.sr_boxes import DetectionReportError, read_detection_sr, to_patient, write_detection_sr
from medsight.sample import Sample

CT_FILE = "dicom/pydicom/CT_small.dcm"  # 128 x 128
CT_SERIES = "dicom/dcmqi/segmentations/ct-3slice"  # 3 x 512 x 512
ENHANCED_CT = "dicom/pydicom/eCT_Supplemental.dcm"  # one file, 2 frames of 512 x 512
NAMES = ["fracture", "cyst"]  # fracture: SNOMED CT 125605004; cyst: no code in medsight's table, 99MEDSIGHT
BOXES_2D = Boxes([[10.1, 20.3, 40.7, 60.9], [0.0, 0.0, 128.0, 128.0]], [0, 1], [0.8765432108766, 0.31])
BOXES_3D = Boxes([[0.5, 100.3, 200.1, 2.5, 300.7, 400.9]], [1], [0.55])
PRIVATE_SCHEME_WARNING = {
    "Unrecognized defined term <99MEDSIGHT> for value 1 of attribute <Coding Scheme Designator>":
        "99MEDSIGHT is medsight's private coding scheme for class names without a SNOMED CT code (PS3.3 8.2: "
        "designators starting '99' are private), described in the Coding Scheme Identification Sequence; "
        "dciodvfy knows only the standard designators",
}


def _float32_tolerance(values: np.ndarray) -> float:
    """GraphicData is VR FL: each stored value is within half an ulp of float32, |v| * 2**-24."""
    return float(np.abs(values).max()) * 2.0**-24


def _write(images, findings, path: Path, **kwargs) -> Path:
    return write_detection_sr(images, findings, path, label_names=NAMES, model="retinanet", version="run-3",
                              **({"score_threshold": 0.3} | kwargs))


def test_2d_round_trip_gives_back_the_boxes_scores_labels_and_uids(shared_data, tmp_path):
    image = read_image(shared_data / CT_FILE)
    report = read_detection_sr(_write([image], [BOXES_2D], tmp_path / "sr.dcm"), label_names=NAMES)
    assert (report.study_uid, report.model, report.version, report.score_threshold) == (
        image.meta["StudyInstanceUID"], "retinanet", "run-3", 0.3)
    [(uid, boxes)] = report.boxes.items()
    assert uid == image.meta["SOPInstanceUID"]
    np.testing.assert_allclose(boxes.corners, BOXES_2D.corners, rtol=0, atol=_float32_tolerance(BOXES_2D.corners))
    assert boxes.labels.tolist() == [0, 1] and boxes.scores.tolist() == BOXES_2D.scores.tolist()  # FD: exact
    sr = pydicom.dcmread(tmp_path / "sr.dcm")
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34" and sr.Modality == "SR"  # Comprehensive 3D SR
    assert sr.StudyInstanceUID == image.meta["StudyInstanceUID"] and sr.SeriesInstanceUID != image.meta[
        "SeriesInstanceUID"]
    assert sr.SeriesDescription == "medsight retinanet detection"


def test_2d_regions_are_closed_polylines_in_dicom_pixel_edge_coordinates(shared_data, tmp_path):
    """(column, row) with (0, 0) the top-left corner of the top-left pixel: medsight's edges, unshifted."""
    image = read_image(shared_data / CT_FILE)
    content = hd.sr.srread(_write([image], [BOXES_2D], tmp_path / "sr.dcm")).content
    first, whole = content.get_planar_roi_measurement_groups()
    assert first.roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
    expected = [[20.3, 10.1], [60.9, 10.1], [60.9, 40.7], [20.3, 40.7], [20.3, 10.1]]
    np.testing.assert_allclose(first.roi.value, expected, rtol=0, atol=_float32_tolerance(np.array(expected)))
    assert whole.roi.value.tolist() == [[0, 0], [128, 0], [128, 128], [0, 128], [0, 0]]  # the whole image
    source = first.roi.ContentSequence[0].ReferencedSOPSequence[0]
    assert source.ReferencedSOPInstanceUID == image.meta["SOPInstanceUID"]
    assert (first.finding_type.value, first.finding_type.scheme_designator, first.finding_type.meaning) == (
        "125605004", "SCT", "fracture")
    assert (whole.finding_type.value, whole.finding_type.scheme_designator) == ("cyst", "99MEDSIGHT")
    (score,) = first.get_measurements(name=pydicom.sr.codedict.codes.DCM.CertaintyOfFinding)
    assert (score.unit.value, score.unit.scheme_designator) == ("1", "UCUM")
    scheme = pydicom.dcmread(tmp_path / "sr.dcm").CodingSchemeIdentificationSequence[0]
    assert scheme.CodingSchemeDesignator == "99MEDSIGHT"


def _copy_of(source: Path, folder: Path, k: int) -> Path:
    """``source`` as another image of its study and series (a new SOP instance)."""
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.InstanceNumber = k
    folder.mkdir(exist_ok=True)
    ds.save_as(folder / f"{k}.dcm")
    return folder / f"{k}.dcm"


def test_several_2d_images_each_get_their_boxes_and_an_image_without_finding_is_listed(shared_data, tmp_path):
    images = [read_image(_copy_of(shared_data / CT_FILE, tmp_path / "study", k)) for k in (1, 2)]
    path = _write(images, [BOXES_2D, Boxes.empty(2, scored=True)], tmp_path / "sr.dcm")
    report = read_detection_sr(path, label_names=NAMES)
    assert list(report.boxes) == [i.meta["SOPInstanceUID"] for i in images]
    assert len(report.boxes[images[0].meta["SOPInstanceUID"]]) == 2
    assert len(report.boxes[images[1].meta["SOPInstanceUID"]]) == 0


@pytest.mark.parametrize("source", [CT_SERIES, ENHANCED_CT], ids=["series", "enhanced-file"])
def test_3d_round_trip_gives_back_the_voxel_boxes(shared_data, tmp_path, source):
    volume = read_dicom_series(shared_data / source) if source == CT_SERIES else read_image(shared_data / source)
    boxes = Boxes([[0.5, 100.3, 200.1, volume.spatial_shape[0] - 0.5, 300.7, 400.9]], [1], [0.55])
    report = read_detection_sr(_write([volume], [boxes], tmp_path / "sr.dcm"), label_names=NAMES, volume=volume)
    [(uid, back)] = report.boxes.items()
    assert uid == volume.meta["SeriesInstanceUID"]
    # float32 millimetres mapped back through the inverse affine: |mm| * 2**-24 per axis, over 3 axes and spacing
    mm = to_patient(volume.affine, boxes.corners.reshape(2, 3))
    tolerance = 3 * _float32_tolerance(mm) * np.abs(np.linalg.inv(volume.affine[:3, :3])).max()
    np.testing.assert_allclose(back.corners, boxes.corners, rtol=0, atol=tolerance)
    assert back.labels.tolist() == [1] and back.scores.tolist() == [0.55]


def test_3d_faces_lie_where_highdicom_places_those_pixels_of_those_slices(shared_data, tmp_path):
    """A box from slice edge 0.5 to 2.5 has its faces through the centres of slices 0 and 2; highdicom's
    ImageToReferenceTransformer (image coordinates: (0, 0) the top-left corner of the top-left pixel) maps the
    box's (column, row) corners on each slice to the same patient points."""
    volume = read_dicom_series(shared_data / CT_SERIES)
    path = _write([volume], [BOXES_3D], tmp_path / "sr.dcm")
    (group,) = hd.sr.srread(path).content.get_volumetric_roi_measurement_groups()
    faces = [np.asarray(item.value) for item in group.roi if item.ValueType == "SCOORD3D"]
    assert [item.graphic_type for item in group.roi if item.ValueType == "SCOORD3D"] == [
        hd.sr.GraphicTypeValues3D.POLYGON] * 2
    for face, slice_file in zip(faces, [volume.meta["slice_files"][0], volume.meta["slice_files"][2]], strict=True):
        header = pydicom.dcmread(slice_file, stop_before_pixels=True)
        transform = hd.spatial.ImageToReferenceTransformer(
            image_position=header.ImagePositionPatient, image_orientation=header.ImageOrientationPatient,
            pixel_spacing=header.PixelSpacing)
        corners = np.array([[200.1, 100.3], [400.9, 100.3], [400.9, 300.7], [200.1, 300.7], [200.1, 100.3]])
        np.testing.assert_allclose(face, transform(corners), rtol=0, atol=3 * _float32_tolerance(face))
    series = [item.value for item in group.roi if item.ValueType == "UIDREF"]
    assert series == [volume.meta["SeriesInstanceUID"]]
    assert {item.ReferencedFrameOfReferenceUID for item in group.roi if item.ValueType == "SCOORD3D"} == {
        volume.meta["FrameOfReferenceUID"]}


@pytest.mark.parametrize("source", [CT_FILE, CT_SERIES], ids=["2d", "series"])
def test_a_report_without_findings_keeps_the_model_version_and_threshold(shared_data, tmp_path, source):
    image = read_dicom_series(shared_data / source) if source == CT_SERIES else read_image(shared_data / source)
    path = _write([image], [Boxes.empty(image.spatial_dims, scored=True)], tmp_path / "sr.dcm")
    report = read_detection_sr(path, label_names=NAMES, volume=image if image.spatial_dims == 3 else None)
    assert (report.model, report.version, report.score_threshold) == ("retinanet", "run-3", 0.3)
    assert [len(b) for b in report.boxes.values()] == [0]


@pytest.mark.parametrize(("source", "boxes"), [
    (CT_FILE, BOXES_2D),
    (CT_SERIES, BOXES_3D),
    (ENHANCED_CT, Boxes([[0.5, 10, 10, 1.5, 20, 30]], [0], [0.9])),
    (CT_FILE, Boxes.empty(2, scored=True)),
], ids=["2d-two-classes", "series", "enhanced-ct-file", "2d-no-finding"])
def test_the_report_passes_dciodvfy(dciodvfy, shared_data, tmp_path, source, boxes):  # noqa: F811
    image = read_dicom_series(shared_data / source) if source == CT_SERIES else read_image(shared_data / source)
    errors, warnings, others = verify(dciodvfy, _write([image], [boxes], tmp_path / "sr.dcm"))
    assert "Comprehensive3DSR" in others and errors == []
    assert unexplained(warnings, {**INHERITED, **PRIVATE_SCHEME_WARNING}) == []
    source_files = image.meta.get("slice_files") or [image.meta["path"]]
    _, source_warnings, _ = verify(dciodvfy, Path(source_files[0]))
    inherited = [w for w in warnings if w.startswith(tuple(INHERITED))]
    assert [w for w in inherited if w not in source_warnings] == []  # "inherited" must really come from the source


def test_the_report_of_a_de_identified_series_passes_dciodvfy(dciodvfy, shared_data, tmp_path):  # noqa: F811
    anonymize_tree(shared_data / CT_SERIES, tmp_path / "anon", key=b"conformance")
    volume = read_dicom_series(tmp_path / "anon")
    errors, warnings, _ = verify(dciodvfy, _write([volume], [BOXES_3D], tmp_path / "sr.dcm"))
    assert errors == [] and unexplained(warnings, {**INHERITED, **DEIDENTIFIED, **PRIVATE_SCHEME_WARNING}) == []


@pytest.mark.parametrize(("boxes", "match"), [
    (Boxes([[1, 1, 5, 5]], [0], [1.5]), "score outside \\[0, 1\\]"),
    (Boxes([[1, 1, 5, 5]], [0], [float("nan")]), "score outside \\[0, 1\\]"),
    (Boxes([[1, 1, 5, 5]], [0]), "boxes without scores"),
    (Boxes([[1, 1, 5, 5]], [2], [0.5]), "labels \\[2\\] are not indices of label_names"),
    (Boxes([[1, 1, 5, 129]], [0], [0.5]), "outside the image \\(128, 128\\)"),
    (Boxes([[0, 1, 1, 2, 5, 5]], [0], [0.5]), "3D boxes on a 2D image"),
], ids=["score-above-1", "nan", "unscored", "unknown-label", "outside", "3d-on-2d"])
def test_bad_findings_are_clear_and_write_nothing(shared_data, tmp_path, boxes, match):
    image = read_image(shared_data / CT_FILE)
    with pytest.raises(DetectionReportError, match=match) as error:
        _write([image], [boxes], tmp_path / "sr.dcm")
    assert isinstance(error.value, MedsightError) and error.value.fix and "CT_small.dcm" in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_images_of_two_studies_a_png_and_a_mismatched_list_are_refused(shared_data, tmp_path):
    image = read_image(shared_data / CT_FILE)
    other = read_image(shared_data / "dicom/pydicom/MR_small.dcm")
    with pytest.raises(DetectionReportError, match="belong to 2 studies.*one report per study"):
        _write([image, other], [BOXES_2D, Boxes.empty(2, scored=True)], tmp_path / "sr.dcm")
    with pytest.raises(DetectionReportError, match="1 images but 2 sets of boxes"):
        _write([image], [BOXES_2D, BOXES_2D], tmp_path / "sr.dcm")
    picture = Sample(np.zeros((1, 8, 8), np.float32), (1.0, 1.0), meta={"path": "x.png", "format": "png"})
    with pytest.raises(UnsupportedFileError, match="x.png: is not a DICOM image"):
        _write([picture], [Boxes.empty(2, scored=True)], tmp_path / "sr.dcm")
    assert list(tmp_path.iterdir()) == []


def test_reading_needs_the_bundles_names_and_the_volume_and_an_sr_file(shared_data, tmp_path):
    volume = read_dicom_series(shared_data / CT_SERIES)
    path = _write([volume], [BOXES_3D], tmp_path / "sr.dcm")
    with pytest.raises(DetectionReportError, match="reports boxes in a volume.*pass volume="):
        read_detection_sr(path, label_names=NAMES)
    with pytest.raises(DetectionReportError, match="reports the class 'cyst', not one of \\['lesion'\\]"):
        read_detection_sr(path, label_names=["lesion"], volume=volume)
    with pytest.raises(DetectionReportError, match="refers to series .*not the volume's"):
        read_detection_sr(path, label_names=NAMES, volume=read_image(shared_data / ENHANCED_CT))
    with pytest.raises(UnreadableFileError, match="not a readable DICOM SR"):
        read_detection_sr(shared_data / CT_FILE, label_names=NAMES)


def test_no_patient_field_in_warnings_errors_or_logs(shared_data, tmp_path, recwarn, caplog):
    header = pydicom.dcmread(shared_data / CT_FILE, stop_before_pixels=True)
    private = [str(header.PatientName), str(header.PatientID)]
    image = read_image(shared_data / CT_FILE)
    with caplog.at_level(logging.DEBUG):
        read_detection_sr(_write([image], [BOXES_2D], tmp_path / "sr.dcm"), label_names=NAMES)
        with pytest.raises(DetectionReportError) as error:
            _write([image], [Boxes([[1, 1, 5, 5]], [0], [2.0])], tmp_path / "bad.dcm")
    said = [str(w.message) for w in recwarn] + [str(error.value), caplog.text]
    assert not [text for text in said for value in private if value in text]
