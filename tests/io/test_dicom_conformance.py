"""dciodvfy (Debian dicom3tools) on every kind of DICOM that medsight writes: SEG, SR, secondary capture, and
de-identified copies. Any Error fails; a warning passes only if it is listed below with its reason.

dciodvfy comes from ``scripts/dicom3tools.sh`` (run by ``make test``, and here when it is missing); the test
skips, saying why, only when it cannot be installed.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medsight.io import read_image
from medsight.io.anonymize import anonymize_tree
from medsight.io.dicom_series import read_dicom_series
from medsight.io.sc_writer import write_secondary_capture
from medsight.io.seg_writer import write_dicom_seg
from medsight.io.sr_writer import write_classification_sr
from medsight.sample import Sample

REPO = Path(__file__).resolve().parents[2]
CT_FILE = "dicom/pydicom/CT_small.dcm"
CT_SERIES = "dicom/dcmqi/segmentations/ct-3slice"
ENHANCED_CT = "dicom/pydicom/eCT_Supplemental.dcm"  # geometry in functional groups, FrameLaterality U
MR_SERIES = "dicom/dcmqi/paramaps/pm-example-dcm/701-ADCb500"  # oblique, orientations rounded differently

#: Warnings that the source file itself gives: the output copies the source's patient and study modules
#: as they are. Each is allowed only when the source's own dciodvfy output has it too.
INHERITED = {
    "Value dubious for this VR - (0x0010,0x0010) PN Patient's Name":
        "the source's one-part PatientName (no '^'); a derived object keeps the patient's name as it is",
    "Value is zero for value 1 of attribute <Patient's Weight>": "the source records a weight of 0",
    "Missing attribute or value that would be needed to build DICOMDIR - Study ID": "the source's Study ID is empty",
    "Unrecognized defined term <GEIIS> for value 1 of attribute <Coding Scheme Designator>":
        "the source's procedure code uses the vendor scheme GEIIS; the SR/SEG copies the procedure code",
}
#: Warnings of medsight's own choosing, with the reason each is the conformant choice.
UNKNOWN_LATERALITY = {
    "is only permitted to be empty when actually unknown; should be absent (not empty) if an unpaired body "
    "part, and have a value if a paired body part - attribute <Laterality>":
        "the source states no laterality: Laterality (Type 2C) is written empty, meaning unknown",
}
DEIDENTIFIED = {
    "Missing attribute or value that would be needed to build DICOMDIR - Study ID":
        "de-identification empties Study ID (PS3.15 action Z); only a DICOMDIR needs a value",
}


@pytest.fixture(scope="module")
def dciodvfy() -> str:
    """The dciodvfy executable, installed by scripts/dicom3tools.sh if missing (skip, saying why, if it cannot be)."""
    found = shutil.which("dciodvfy")
    if found:
        return found
    done = subprocess.run(["bash", str(REPO / "scripts" / "dicom3tools.sh")], capture_output=True, text=True)
    found = shutil.which("dciodvfy")
    if done.returncode != 0 or found is None:
        pytest.skip(f"dciodvfy (Debian dicom3tools) could not be installed (scripts/dicom3tools.sh exit "
                    f"{done.returncode}): {done.stderr.strip()[-500:]}")
    return found


def verify(dciodvfy: str, path: Path) -> tuple[list[str], list[str], list[str]]:
    """dciodvfy's verdict on ``path``: (errors, warnings without their ``Warning - `` prefix, other lines).

    Errors are the lines that start with ``Error`` or ``Abort``, and errors it reports against a tag
    (``(0x....,0x....) ... - Error - ...``).
    """
    done = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=120)
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("Error", "Abort")) or " - Error - " in line]
    warnings = [line.removeprefix("Warning - ") for line in lines if line.startswith("Warning")]
    others = [line for line in lines if line not in errors and not line.startswith("Warning")]
    return errors, warnings, others


def unexplained(warnings: list[str], allowed: dict[str, str]) -> list[str]:
    """The warnings that start with none of the ``allowed`` texts."""
    return [warning for warning in warnings if not warning.startswith(tuple(allowed))]


def _series(root: Path, folder: str) -> Sample:
    return read_dicom_series(root / folder)


def _file(root: Path, name: str) -> Sample:
    return read_image(root / name)


def _seg(image: Sample, path: Path) -> Path:
    """A SEG as `medsight pacs run` and `segment --dicom-seg` write it: the label volume on the series' grid."""
    labels = np.zeros(image.spatial_shape, np.uint8)
    rows, cols = image.spatial_shape[1:]
    labels[:, rows // 4: rows // 2, cols // 4: cols // 2] = 1
    return write_dicom_seg(labels, image, path, label_names=["background", "liver"], model="unet", version="run-1")


def _sr(image: Sample, path: Path) -> Path:
    """An SR as `medsight pacs run` writes a classifier's prediction."""
    prediction = {"label": "nodule", "probabilities": {"normal": 0.25, "nodule": 0.75}}
    return write_classification_sr(prediction, image, path, label_names=["normal", "nodule"], model="compact_cnn",
                                   version="run-1")


def _sc(image: Sample, path: Path) -> Path:
    """A Grad-CAM overlay as gradcam_secondary_capture writes it (an RGB picture in the source study)."""
    rgb = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    return write_secondary_capture(rgb, image, path, description="medsight gradcam nodule", model="compact_cnn",
                                   version="run-1")


#: (id, source, reader, writer, IOD name dciodvfy must recognise, own warnings allowed beyond INHERITED)
OUTPUTS: list[tuple[str, str, Callable, Callable, str, dict[str, str]]] = [
    ("seg-ct-series", CT_SERIES, _series, _seg, "Segmentation", {}),
    ("seg-mr-oblique-series", MR_SERIES, _series, _seg, "Segmentation", {}),
    ("sr-ct-file", CT_FILE, _file, _sr, "Comprehensive3DSR", {}),
    ("sr-ct-series", CT_SERIES, _series, _sr, "Comprehensive3DSR", {}),
    ("sr-mr-oblique-series", MR_SERIES, _series, _sr, "Comprehensive3DSR", {}),
    ("sr-enhanced-ct-file", ENHANCED_CT, _file, _sr, "Comprehensive3DSR", {}),
    ("sc-ct-file", CT_FILE, _file, _sc, "SCImage", UNKNOWN_LATERALITY),
    ("sc-ct-series", CT_SERIES, _series, _sc, "SCImage", UNKNOWN_LATERALITY),
    ("sc-mr-oblique-series", MR_SERIES, _series, _sc, "SCImage", UNKNOWN_LATERALITY),
]


@pytest.mark.parametrize(("source", "reader", "writer", "iod", "allowed"), [case[1:] for case in OUTPUTS],
                         ids=[case[0] for case in OUTPUTS])
def test_what_medsight_writes_passes_dciodvfy(dciodvfy, shared_data, tmp_path, source, reader, writer, iod,
                                              allowed):
    image = reader(shared_data, source)
    errors, warnings, others = verify(dciodvfy, writer(image, tmp_path / "out.dcm"))
    assert iod in others, f"dciodvfy did not validate it as {iod}: {others}"
    assert errors == []
    assert unexplained(warnings, {**INHERITED, **allowed}) == []
    source_files = image.meta.get("slice_files") or [image.meta["path"]]
    _, source_warnings, _ = verify(dciodvfy, Path(source_files[len(source_files) // 2]))
    inherited = [w for w in warnings if w.startswith(tuple(INHERITED)) and not w.startswith(tuple(allowed))]
    assert [w for w in inherited if w not in source_warnings] == []  # "inherited" must really come from the source


@pytest.mark.parametrize("writer", [_seg, _sr, _sc], ids=["seg", "sr", "sc"])
def test_outputs_of_a_de_identified_series_pass(dciodvfy, shared_data, tmp_path, writer):
    """The feedback and research path: the series is de-identified first, then segmented or classified."""
    anonymize_tree(shared_data / CT_SERIES, tmp_path / "anon", key=b"conformance")
    errors, warnings, _ = verify(dciodvfy, writer(read_dicom_series(tmp_path / "anon"), tmp_path / "out.dcm"))
    assert errors == []
    assert unexplained(warnings, {**INHERITED, **DEIDENTIFIED, **UNKNOWN_LATERALITY}) == []


@pytest.mark.parametrize(("laterality", "image_laterality"), [("R", None), (None, "L"), ("L", "L")])
def test_a_capture_of_a_sided_source_states_its_side_and_passes(dciodvfy, shared_data, tmp_path, laterality,
                                                                image_laterality):
    source = pydicom.dcmread(shared_data / CT_FILE)
    del source.Laterality
    if laterality:
        source.Laterality = laterality
    if image_laterality:
        source.ImageLaterality = image_laterality
    source.save_as(tmp_path / "sided.dcm")
    path = _sc(read_image(tmp_path / "sided.dcm"), tmp_path / "sc.dcm")
    errors, warnings, _ = verify(dciodvfy, path)
    assert errors == [] and unexplained(warnings, INHERITED) == []
    sc = pydicom.dcmread(path)
    assert sc.get("ImageLaterality") == image_laterality
    assert sc.get("Laterality") == (None if image_laterality else laterality)  # Type 2C: not sent with ImageLaterality


def test_a_capture_of_an_enhanced_ct_carries_its_frame_laterality(dciodvfy, shared_data, tmp_path):
    path = _sc(read_image(shared_data / ENHANCED_CT), tmp_path / "sc.dcm")
    errors, warnings, _ = verify(dciodvfy, path)
    assert errors == [] and unexplained(warnings, INHERITED) == []
    sc = pydicom.dcmread(path)
    assert sc.ImageLaterality == "U" and "Laterality" not in sc  # every frame is "unpaired" (a brain)


@pytest.mark.parametrize("source", [
    CT_FILE, "dicom/pydicom/MR_small.dcm", "dicom/pydicom/emri_small.dcm", ENHANCED_CT,
    "dicom/pydicom/MR-SIEMENS-DICOM-WithOverlays.dcm", f"{CT_SERIES}/01.dcm", "dicom/dcmqi/segmentations/liver.dcm",
    "dicom/dcmqi/sr-example/sr.dcm",
])
def test_de_identification_adds_no_error(dciodvfy, shared_data, tmp_path, source):
    anonymize_tree(shared_data / source, tmp_path / "anon", key=b"conformance")
    anonymized = tmp_path / "anon" / Path(source).name
    errors_before, warnings_before, _ = verify(dciodvfy, shared_data / source)
    errors_after, warnings_after, _ = verify(dciodvfy, anonymized)
    assert [e for e in errors_after if e not in errors_before] == []
    assert unexplained([w for w in warnings_after if w not in warnings_before], DEIDENTIFIED) == []
    assert pydicom.dcmread(anonymized, stop_before_pixels=True).PatientIdentityRemoved == "YES"
