"""RGB pictures as DICOM Secondary Capture: same study, new series, pixels read back bit for bit."""


import numpy as np
import pydicom
import pytest

from medsight.errors import InvalidImageError, MedsightError, UnsupportedFileError
from medsight.io import read_image
from medsight.io.sc_writer import (
    patient_orientation,
    read_secondary_capture,
    source_laterality,
    write_secondary_capture,
)
from medsight.sample import Sample

CT_2D = "dicom/pydicom/CT_small.dcm"
CT_SERIES = "dicom/dcmqi/segmentations/ct-3slice"


@pytest.mark.parametrize("source", [CT_2D, CT_SERIES], ids=["2d", "series"])
def test_pixels_and_study_round_trip(shared_data, tmp_path, source):
    image = read_image(shared_data / source)
    rgb = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    path = write_secondary_capture(rgb, image, tmp_path / "sc.dcm", description="medsight gradcam nodule",
                                   model="compact_cnn", version="run-1")
    np.testing.assert_array_equal(read_secondary_capture(path), rgb)
    sc = pydicom.dcmread(path)
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
    assert sc.StudyInstanceUID == image.meta["StudyInstanceUID"]
    assert sc.SeriesInstanceUID != image.meta["SeriesInstanceUID"]
    assert sc.ReferencedSeriesSequence[0].SeriesInstanceUID == image.meta["SeriesInstanceUID"]
    source_files = image.meta.get("slice_files") or [image.meta["path"]]
    middle = pydicom.dcmread(source_files[len(source_files) // 2], stop_before_pixels=True)
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == middle.SOPInstanceUID
    assert sc.PatientID == middle.PatientID  # the patient module travels with the picture
    assert sc.SeriesDescription == "medsight gradcam nodule" and sc.Manufacturer == "medsight"


def test_patient_orientation_comes_from_the_file():
    ds = pydicom.Dataset()
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]  # axial: rows go to the patient's left, columns to posterior
    assert patient_orientation(ds) == ("L", "P")
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]  # sagittal
    assert patient_orientation(ds) == ("P", "F")
    ds.PatientOrientation = ["A", "FR"]
    assert patient_orientation(ds) == ("A", "FR")


@pytest.mark.parametrize("rgb", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8),
                                 np.zeros((8, 8, 3), np.float32)], ids=["grey", "rgba", "float"])
def test_wrong_picture_is_clear_and_writes_nothing(shared_data, tmp_path, rgb):
    image = read_image(shared_data / CT_2D)
    with pytest.raises(InvalidImageError, match=r"not an \(H, W, 3\) uint8 RGB array"):
        write_secondary_capture(rgb, image, tmp_path / "sc.dcm", description="d", model="m", version="1")
    assert not list(tmp_path.iterdir())


def test_non_dicom_image_and_non_sc_file_are_clear(shared_data, tmp_path):
    picture = Sample(np.zeros((1, 8, 8), np.float32), (1.0, 1.0), meta={"path": "x.png", "format": "png"})
    with pytest.raises(UnsupportedFileError, match="x.png: is not a DICOM image"):
        write_secondary_capture(np.zeros((8, 8, 3), np.uint8), picture, tmp_path / "a.dcm", description="d",
                                model="m", version="1")
    with pytest.raises(MedsightError, match="not an RGB secondary capture"):
        read_secondary_capture(shared_data / CT_2D)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("laterality", "image_laterality", "written"), [
    ("R", None, ("R", None)),  # the series' side travels
    (None, "B", (None, "B")),  # Image Laterality travels; Laterality (Type 2C) then stays out
    ("L", "L", (None, "L")),
    (None, None, ("", None)),  # nothing stated: Laterality present and empty, meaning unknown
    ("", None, ("", None)),
    ("RIGHT", None, ("", None)),  # not an enumerated value: unknown too
], ids=["laterality", "image-laterality", "both", "none", "empty", "invalid"])
def test_laterality_follows_the_source(shared_data, tmp_path, laterality, image_laterality, written):
    source = pydicom.dcmread(shared_data / CT_2D)
    del source.Laterality
    if laterality is not None:
        source.Laterality = laterality
    if image_laterality is not None:
        source.ImageLaterality = image_laterality
    source.save_as(tmp_path / "source.dcm")
    path = write_secondary_capture(np.zeros((8, 8, 3), np.uint8), read_image(tmp_path / "source.dcm"),
                                   tmp_path / "sc.dcm", description="d", model="m", version="1")
    sc = pydicom.dcmread(path)
    assert (sc.get("Laterality"), sc.get("ImageLaterality")) == written


def test_a_frame_laterality_shared_by_all_frames_becomes_the_image_laterality():
    ds = pydicom.Dataset()
    anatomy = pydicom.Dataset()
    anatomy.FrameLaterality = "U"
    group = pydicom.Dataset()
    group.FrameAnatomySequence = [anatomy]
    ds.SharedFunctionalGroupsSequence = [group]
    assert source_laterality(ds) == (None, "U")
    other = pydicom.Dataset()
    other.FrameLaterality = "R"
    per_frame = pydicom.Dataset()
    per_frame.FrameAnatomySequence = [other]
    ds.PerFrameFunctionalGroupsSequence = [per_frame]
    assert source_laterality(ds) == (None, None)  # frames disagree: no one image laterality


def test_an_oblique_series_gets_a_capture_with_its_refined_orientation(shared_data, tmp_path):
    """highdicom accepts only single letters; an oblique MR's orientation ("LPH") used to raise ValueError."""
    image = read_image(shared_data / "dicom/dcmqi/paramaps/pm-example-dcm/701-ADCb500")
    rgb = np.random.default_rng(1).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    path = write_secondary_capture(rgb, image, tmp_path / "sc.dcm", description="d", model="m", version="1")
    np.testing.assert_array_equal(read_secondary_capture(path), rgb)
    middle = pydicom.dcmread(image.meta["slice_files"][len(image.meta["slice_files"]) // 2], stop_before_pixels=True)
    assert list(pydicom.dcmread(path).PatientOrientation) == list(patient_orientation(middle)) == ["LPH", "PHR"]
