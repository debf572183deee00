"""The issue-31 corpus: 100 corrupted real DICOM files and 10 corrupted NIfTI volumes.

Every variant either reads as a Sample or raises a MedsightError that names the file;
never a traceback from a decoding library.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pydicom
import pytest
from corrupt_files import NIFTI_KINDS, corrupt_dicom_corpus, corrupt_nifti_corpus, dicom_sources

from medsight.errors import ImageTooLargeError, MedsightError, UnreadableFileError
from medsight.io import read_image
from medsight.sample import Sample

#: pydicom warns about every element the corruption broke; the test is about what read_image raises
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _outcomes(paths: list[Path]) -> dict[Path, Sample | Exception]:
    results: dict[Path, Sample | Exception] = {}
    for path in paths:
        try:
            results[path] = read_image(path)
        except Exception as exc:  # noqa: BLE001 (the test sorts out what was raised)
            results[path] = exc
    return results


@pytest.fixture(scope="module")
def dicom_outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, Sample | Exception]:
    return _outcomes(corrupt_dicom_corpus(tmp_path_factory.mktemp("dicom"), n=100, seed=0))


@pytest.fixture(scope="module")
def nifti_outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, Sample | Exception]:
    return _outcomes(corrupt_nifti_corpus(tmp_path_factory.mktemp("nifti"), n=10, seed=0))


def _not_clear(outcomes: dict[Path, Sample | Exception]) -> list[str]:
    return [
        f"{path.name}: {type(result).__name__}: {result}"
        for path, result in outcomes.items()
        if not isinstance(result, Sample) and not (isinstance(result, MedsightError) and str(path) in str(result))
    ]


def test_the_corpus_is_the_same_for_a_seed(tmp_path: Path) -> None:
    first = corrupt_dicom_corpus(tmp_path / "a", n=12, seed=3) + corrupt_nifti_corpus(tmp_path / "b", n=5, seed=3)
    again = corrupt_dicom_corpus(tmp_path / "c", n=12, seed=3) + corrupt_nifti_corpus(tmp_path / "d", n=5, seed=3)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    assert len({p.name.split("_", 1)[1] for p in first[:10]}) == 10  # ten different sources


def test_every_corrupted_dicom_gives_a_sample_or_an_error_naming_the_file(
    dicom_outcomes: dict[Path, Sample | Exception],
) -> None:
    assert len(dicom_outcomes) == 100
    assert _not_clear(dicom_outcomes) == []


def test_every_corrupted_nifti_gives_a_sample_or_an_error_naming_the_file(
    nifti_outcomes: dict[Path, Sample | Exception],
) -> None:
    assert len(nifti_outcomes) == 10
    assert _not_clear(nifti_outcomes) == []


def test_the_bad_nifti_headers_are_refused_for_what_they_are(nifti_outcomes: dict[Path, Sample | Exception]) -> None:
    """Huge dims are refused from the header by size; a bad datatype, an impossible data offset
    or a cut gzip stream is unreadable (flipped header bytes may be harmless, so they are free)."""
    expected = {
        "datatype_999": UnreadableFileError,
        "huge_dims": ImageTooLargeError,
        "truncate": UnreadableFileError,
        "huge_vox_offset": UnreadableFileError,
    }
    seen = Counter()
    for path, result in nifti_outcomes.items():
        kind = next(k for k in NIFTI_KINDS if path.name.split(".nii")[0].endswith(k))
        if kind in expected:
            assert type(result) is expected[kind], f"{path.name}: {result!r}"
            seen[kind] += 1
    assert seen == dict.fromkeys(expected, 2)


def test_a_dicom_cut_before_the_end_of_its_pixels_never_reads_as_an_image(
    dicom_outcomes: dict[Path, Sample | Exception],
) -> None:
    ends = {}
    for source in dicom_sources():
        ds = pydicom.dcmread(source)
        element = ds.get_item(0x7FE00010)
        ends[source.name.removesuffix(".dcm")] = element.value_tell + element.length
    cut_short = {
        path: result
        for path, result in dicom_outcomes.items()
        if path.name.endswith("_truncate.dcm") and path.stat().st_size < ends[path.name[4 : -len("_truncate.dcm")]]
    }
    assert len(cut_short) >= 30
    for path, result in cut_short.items():
        assert isinstance(result, UnreadableFileError), f"{path.name}: {result!r}"
        assert "truncated" in str(result) or "not a DICOM file" in str(result), str(result)
