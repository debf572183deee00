"""Window presets, the DICOM linear window and resolving ``window=`` arguments."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from medsight.errors import ConfigError
from medsight.io.windowing import WINDOW_PRESETS, apply_window, resolve_window


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("lung", (-600, 1500)),
        ("mediastinum", (50, 350)),
        ("bone", (400, 1800)),
        ("brain", (40, 80)),
        ("abdomen", (40, 400)),
        ("liver", (60, 160)),
        ("soft_tissue", (50, 400)),
        ("LUNG", (-600, 1500)),
    ],
)
def test_presets_resolve_to_their_center_and_width(name: str, expected: tuple[float, float]) -> None:
    assert resolve_window(name) == expected


@pytest.mark.parametrize(
    ("hu", "expected"),
    [(-1000.0, 0.0), (-160.0, 0.0), (40.0, 0.5 + 0.5 / 399), (140.0, 0.5 + 100.5 / 399), (240.0, 1.0), (3000.0, 1.0)],
)
def test_apply_window_is_the_dicom_linear_function(hu: float, expected: float) -> None:
    out = apply_window(np.array([hu]), 40, 400)
    assert out.dtype == np.float32
    assert out[0] == pytest.approx(expected, abs=1e-6)


def test_width_one_is_a_threshold() -> None:
    assert apply_window(np.array([9.0, 10.0, 11.0]), 10, 1).tolist() == [0.0, 1.0, 1.0]


def test_none_and_pairs() -> None:
    assert resolve_window(None) is None
    assert resolve_window((40, 400)) == (40.0, 400.0)
    assert resolve_window([-600.5, 1500]) == (-600.5, 1500.0)


@pytest.mark.parametrize(
    ("window", "needle"),
    [("lungs", "lung, mediastinum, bone"), (("a", 3), "(center, width)"), ((40, 0), "at least 1"), ((1, 2, 3), "pair")],
)
def test_bad_windows_raise_config_error_with_the_choices(window: object, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_window(window)  # type: ignore[arg-type]
    assert needle in str(err.value)


def test_file_window_takes_the_first_of_several_values() -> None:
    ds = Dataset()
    ds.WindowCenter = [40, 300]
    ds.WindowWidth = [400, 1500]
    assert resolve_window("file", ds) == (40.0, 400.0)


def test_file_window_reads_enhanced_functional_groups(shared_data) -> None:
    ds = pydicom.dcmread(shared_data / "dicom/pydicom/eCT_Supplemental.dcm", stop_before_pixels=True)
    assert resolve_window("file", ds) == (49.0, 102.0)


def test_file_window_without_a_dicom_window_says_what_to_pass(shared_data) -> None:
    path = shared_data / "dicom/pydicom/CT_small.dcm"
    with pytest.raises(ConfigError) as err:
        resolve_window("file", pydicom.dcmread(path, stop_before_pixels=True))
    assert "CT_small.dcm" in str(err.value) and "preset" in str(err.value)
    with pytest.raises(ConfigError, match="only a DICOM file"):
        resolve_window("file", None)


def test_every_preset_is_documented_in_the_error() -> None:
    with pytest.raises(ConfigError) as err:
        resolve_window("nope")
    assert all(name in str(err.value) for name in WINDOW_PRESETS)
