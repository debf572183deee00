"""DICOM series: grouping by series, sorting by position, spacing, and choosing among series."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from medsight.errors import DatasetError
from medsight.io import list_series, read_dicom_series, read_image
from medsight.io.windowing import apply_window


@pytest.fixture(scope="module")
def ct3(shared_data: Path) -> Path:
    return shared_data / "dicom/dcmqi/segmentations/ct-3slice"


@pytest.fixture(scope="module")
def adc(shared_data: Path) -> Path:
    return shared_data / "dicom/dcmqi/paramaps/pm-example-dcm/701-ADCb500"


def test_three_ct_slices_stack_in_hu_with_spacing_from_positions(ct3: Path) -> None:
    sample = read_dicom_series(ct3)
    assert sample.array.shape == (1, 3, 512, 512)
    # positions z = -126.69, -127.69, -128.69: 1 mm apart although SliceThickness says 1.25
    assert sample.spacing == pytest.approx((1.0, 0.810547, 0.810547), abs=1e-5)
    assert sample.array.min() == -3024.0  # the padding outside the scan circle
    assert -200 < sample.array[0, 1, 256, 256] < 200  # soft tissue in the middle
    assert sample.array.max() < 3100
    assert [Path(p).name for p in sample.meta["slice_files"]] == ["03.dcm", "02.dcm", "01.dcm"]
    # origin is the lowest slice's position in RAS; one slice step goes +1 mm superior
    assert sample.affine @ [0, 0, 0, 1] == pytest.approx([235.199997, 226.800003, -128.690002, 1])
    assert (sample.affine @ [1, 0, 0, 1] - sample.affine @ [0, 0, 0, 1])[:3] == pytest.approx([0, 0, 1], abs=1e-5)


def test_twenty_slice_mr_series_is_three_mm_apart(adc: Path) -> None:
    sample = read_image(adc)
    assert sample.array.shape == (1, 20, 256, 256)
    assert sample.spacing == pytest.approx((3.0, 0.7031, 0.7031), abs=1e-3)
    assert sample.meta["modality"] == "MR" and sample.meta["n_slices"] == 20
    assert sample.meta["SeriesDescription"] == "Apparent Diffusion Coefficient (mm?/s)"


def test_sorting_uses_positions_not_file_names(ct3: Path, tmp_path: Path) -> None:
    # 01 (top) gets the name that sorts last, 03 (bottom) a name in a subfolder that sorts first
    (tmp_path / "a").mkdir()
    shutil.copy(ct3 / "01.dcm", tmp_path / "z_slice.dcm")
    shutil.copy(ct3 / "02.dcm", tmp_path / "b_slice")
    shutil.copy(ct3 / "03.dcm", tmp_path / "a" / "m_slice.dcm")
    np.testing.assert_array_equal(read_dicom_series(tmp_path).array, read_dicom_series(ct3).array)


def test_file_window_uses_the_first_slice(ct3: Path) -> None:
    raw = read_dicom_series(ct3).array
    windowed = read_dicom_series(ct3, window="file")
    assert windowed.meta["window"] == [40.0, 400.0]
    np.testing.assert_allclose(windowed.array, apply_window(raw, 40, 400))


@pytest.fixture()
def two_series(ct3: Path, adc: Path, tmp_path: Path) -> Path:
    shutil.copytree(ct3, tmp_path / "ct")
    shutil.copytree(adc, tmp_path / "mr")
    (tmp_path / "notes.txt").write_text("not dicom")
    return tmp_path


def test_list_series_describes_each_series(two_series: Path) -> None:
    infos = list_series(two_series)
    assert [(i.modality, i.n_files) for i in infos] == [("MR", 20), ("CT", 3)]
    assert infos[0].description == "Apparent Diffusion Coefficient (mm?/s)"


def test_several_series_need_a_series_uid(two_series: Path) -> None:
    infos = list_series(two_series)
    with pytest.raises(DatasetError) as err:
        read_image(two_series)
    message = str(err.value)
    assert str(two_series) in message and "holds 2 series" in message and "series_uid" in message
    for info in infos:
        assert info.series_uid in message and f"{info.n_files} files" in message
    ct_uid = infos[1].series_uid
    assert read_image(two_series, series_uid=ct_uid).array.shape == (1, 3, 512, 512)


def test_unknown_series_uid_lists_the_series(two_series: Path) -> None:
    with pytest.raises(DatasetError) as err:
        read_dicom_series(two_series, series_uid="1.2.3.4")
    assert "no series '1.2.3.4'" in str(err.value)
    assert all(info.series_uid in str(err.value) for info in list_series(two_series))


def test_copies_of_one_instance_count_once(ct3: Path, tmp_path: Path) -> None:
    shutil.copytree(ct3, tmp_path / "s")
    shutil.copy(ct3 / "02.dcm", tmp_path / "s" / "02_copy.dcm")
    assert read_dicom_series(tmp_path / "s").array.shape == (1, 3, 512, 512)


def _rewrite(src: Path, dst: Path, change) -> None:
    ds = pydicom.dcmread(src)
    change(ds)
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(dst)


def _smaller(ds: pydicom.Dataset) -> None:
    ds.PixelData = ds.pixel_array[::2, ::2].copy().tobytes()
    ds.Rows, ds.Columns = 256, 256


@pytest.mark.parametrize(
    ("change", "needles"),
    [
        (_smaller, ["different sizes", "512x512x1: 2 files", "256x256x1: 1 files", "remove the odd files"]),
        (lambda ds: None, ["repeat the position", "split the series"]),
    ],
    ids=["different-size", "same-position"],
)
def test_slices_that_do_not_stack_are_reported(ct3: Path, tmp_path: Path, change, needles) -> None:
    shutil.copy(ct3 / "01.dcm", tmp_path / "01.dcm")
    shutil.copy(ct3 / "02.dcm", tmp_path / "02.dcm")
    _rewrite(ct3 / "02.dcm", tmp_path / "x.dcm", change)
    with pytest.raises(DatasetError) as err:
        read_dicom_series(tmp_path)
    assert str(tmp_path) in str(err.value)
    for needle in needles:
        assert needle in str(err.value)


def test_non_image_objects_are_not_series(shared_data: Path, ct3: Path, tmp_path: Path) -> None:
    shutil.copy(shared_data / "dicom/dcmqi/sr-example/sr.dcm", tmp_path / "sr.dcm")
    with pytest.raises(DatasetError, match="holds no DICOM image files"):
        list_series(tmp_path)
    shutil.copy(shared_data / "dicom/dcmqi/segmentations/liver.dcm", tmp_path / "seg.dcm")
    shutil.copytree(ct3, tmp_path / "ct")
    assert [(i.modality, i.n_files) for i in list_series(tmp_path)] == [("CT", 3)]


def test_a_file_is_not_a_folder(ct3: Path) -> None:
    with pytest.raises(DatasetError, match="is not a folder"):
        list_series(ct3 / "01.dcm")


def test_a_missing_slice_is_reported(adc: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for path in sorted(adc.glob("*.dcm")):
        if path.name != "000010.dcm":
            shutil.copy(path, tmp_path / path.name)
    with caplog.at_level("WARNING", logger="medsight.io.dicom_series"):
        sample = read_dicom_series(tmp_path)
    assert sample.array.shape == (1, 19, 256, 256)
    assert "unevenly spaced (missing slices?)" in caplog.text
