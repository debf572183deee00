"""DICOM SEG output: references the source series, SNOMED-coded segments, round trip to the same mask."""

import numpy as np
import pydicom
import pytest

from medsight.errors import InvalidImageError, UnsupportedFileError
from medsight.io.dicom_seg import read_dicom_seg
from medsight.io.dicom_series import read_dicom_series
from medsight.io.seg_writer import segment_codes, write_dicom_seg


@pytest.fixture
def ct(shared_data):
    return shared_data / "dicom" / "dcmqi" / "segmentations" / "ct-3slice"


def test_seg_round_trip_on_the_real_ct_gives_back_the_same_labels(ct, tmp_path):
    image = read_dicom_series(ct)
    labels = np.zeros(image.spatial_shape, np.uint8)
    labels[0, 100:200, 150:260] = 1
    labels[2, 300:320, 40:90] = 2
    labels[1, 10:30, 10:30] = 2
    path = write_dicom_seg(labels, image, tmp_path / "pred_seg.dcm", label_names=["background", "liver", "tumour"],
                           model="unet", version="run-7")
    _, read_back, names = read_dicom_seg(path, ct)
    np.testing.assert_array_equal(read_back, labels)
    assert names == {1: "liver", 2: "tumour"}
    seg = pydicom.dcmread(path)
    source = pydicom.dcmread(next(ct.iterdir()))
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    liver, tumour = seg.SegmentSequence
    assert liver.SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"  # SCT Liver
    assert tumour.SegmentedPropertyCategoryCodeSequence[0].CodeMeaning == "Morphologically Abnormal Structure"
    algorithm = liver.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "medsight unet" and algorithm.AlgorithmVersion.startswith("run-7")


def test_unknown_label_names_fall_back_to_tissue():
    category, kind = segment_codes("weird structure 3")
    assert (category.value, kind.value) == ("85756007", "85756007")
    assert segment_codes("Blood-Vessel")[1].value == "59820001"


def test_bad_inputs_are_clear_and_write_nothing(ct, tmp_path):
    from medsight.sample import Sample

    image = read_dicom_series(ct)
    with pytest.raises(InvalidImageError, match="do not match the series"):
        write_dicom_seg(np.zeros((2, 4, 4), np.uint8), image, tmp_path / "a.dcm", label_names=["b", "x"],
                        model="m", version="1")
    with pytest.raises(UnsupportedFileError, match="not a DICOM series"):
        write_dicom_seg(np.zeros((4, 4), np.uint8), Sample(np.zeros((1, 4, 4), np.float32), (1.0, 1.0)),
                        tmp_path / "b.dcm", label_names=["b", "x"], model="m", version="1")
    assert not list(tmp_path.iterdir())


def _tilted_copy(ct, tmp_path, delta: float):
    """ct-3slice with the middle slice's column direction tilted by ``delta`` (written as the DS text)."""
    import shutil

    folder = tmp_path / "ct"
    shutil.copytree(ct, folder)
    path = sorted(folder.iterdir())[1]
    ds = pydicom.dcmread(path)
    iop = [float(v) for v in ds.ImageOrientationPatient]
    ds.ImageOrientationPatient = [*iop[:5], iop[5] + delta]
    ds.save_as(path)
    return folder


def test_orientations_that_differ_only_by_rounding_make_one_seg(ct, tmp_path):
    """Real series write IOP with varying decimals (0.0038759 / 0.00387589); highdicom compares them exactly."""
    folder = _tilted_copy(ct, tmp_path, 1e-7)
    image = read_dicom_series(folder)
    labels = np.zeros(image.spatial_shape, np.uint8)
    labels[:, 200:260, 100:180] = 1
    path = write_dicom_seg(labels, image, tmp_path / "seg.dcm", label_names=["background", "liver"], model="unet",
                           version="1")
    _, read_back, _ = read_dicom_seg(path, folder)
    np.testing.assert_array_equal(read_back, labels)
    orientation = pydicom.dcmread(path).SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
    first = pydicom.dcmread(sorted(folder.iterdir())[0])
    assert [float(v) for v in orientation.ImageOrientationPatient] == [float(v) for v in first.ImageOrientationPatient]


def test_a_real_oblique_mr_series_gets_a_seg(shared_data, tmp_path):
    folder = shared_data / "dicom" / "dcmqi" / "paramaps" / "pm-example-dcm" / "701-ADCb500"
    image = read_dicom_series(folder)
    labels = np.zeros(image.spatial_shape, np.uint8)
    labels[8:12, 100:140, 120:150] = 1
    path = write_dicom_seg(labels, image, tmp_path / "seg.dcm", label_names=["background", "prostate"],
                           model="unet", version="1")
    _, read_back, names = read_dicom_seg(path, folder)
    np.testing.assert_array_equal(read_back, labels)
    assert names == {1: "prostate"}


def test_slices_of_really_different_orientations_are_still_refused(ct, tmp_path):
    folder = _tilted_copy(ct, tmp_path, 0.01)  # about half a degree: not a rounding difference
    image = read_dicom_series(folder)
    with pytest.raises(InvalidImageError, match="could not build a DICOM SEG"):
        write_dicom_seg(np.ones(image.spatial_shape, np.uint8), image, tmp_path / "seg.dcm",
                        label_names=["background", "liver"], model="unet", version="1")
    assert not (tmp_path / "seg.dcm").exists()
