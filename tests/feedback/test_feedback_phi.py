"""No patient data in the feedback folder, whatever path a DICOM takes into it (issue 31, item 3).

Each case plants a patient name, ID and birth date in a DICOM (an input without the 128-byte
preamble and DICM marker, a bare dataset without file meta, a normal Part 10 input, a corrected
mask sent as DICOM), sends it through ``/v1/feedback`` (uploaded with the verdict, or predicted
first and named by its ``input_sha256``), then greps every byte of every file in the feedback
folder (the database, its WAL, the input copies) for the planted values.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from feedback_data import PHI, dicom_bytes, pixels, png_bytes
from phi_dicom import phi_dicom_bytes

from medsight.feedback import FeedbackStore


def _without_preamble(data: bytes) -> bytes:
    return data[132:]  # file meta (group 0002) first, no preamble, no DICM


def _bare_dataset(data: bytes) -> bytes:
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = pydicom.dcmread(io.BytesIO(data))
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)  # no preamble, no DICM, no file meta: starts with group 0008
    return out.getvalue()


def _mask_dicom() -> bytes:
    mask = np.zeros(pixels().shape, np.uint8)
    mask[8:18, 10:20] = 1
    return phi_dicom_bytes(mask)


CASES = {
    "preamble-less DICOM input": (lambda: _without_preamble(dicom_bytes(7)), None),
    "bare DICOM dataset input": (lambda: _bare_dataset(dicom_bytes(8)), None),
    "Part 10 DICOM input": (lambda: dicom_bytes(9), None),
    "DICOM corrected mask": (lambda: png_bytes(4), _mask_dicom),
}


def _everything(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def _send(client, route: str, data: bytes, mask: bytes | None) -> dict:
    verdict = {"verdict": "mask" if mask is not None else "agree"}
    masks = {"mask": ("Doe_Jane_mask.dcm", mask, "application/dicom")} if mask is not None else {}
    if route == "upload":
        answer = client.post("/v1/feedback", data=verdict,
                             files={"file": ("Doe_Jane.png", data, "image/png"), **masks})
    else:
        predicted = client.post("/v1/predict", files={"file": ("Doe_Jane.png", data, "image/png")})
        assert predicted.status_code == 200, predicted.text
        fields = {**verdict, "input_sha256": predicted.json()["input_sha256"]}
        answer = (client.post("/v1/feedback", data=fields, files=masks) if masks
                  else client.post("/v1/feedback", json=fields))
    assert answer.status_code == 201, answer.text
    return answer.json()


@pytest.mark.parametrize("route", ["upload", "input_sha256"])
@pytest.mark.parametrize("case", list(CASES))
def test_no_planted_patient_value_is_stored(feedback_client, tmp_path: Path, case: str, route: str) -> None:
    from medsight.io import read_image

    make_input, make_mask = CASES[case]
    data, mask = make_input(), make_mask() if make_mask else None
    assert all(s.encode() in data + (mask or b"") for s in PHI if s != "Doe_Jane")  # the values are planted
    answer = _send(feedback_client, route, data, mask)

    root = tmp_path / "feedback"
    (row,) = FeedbackStore(root).rows()
    assert row["id"] == answer["id"] and row["kind"] == ("mask" if mask else "agree")
    everything = _everything(root)
    assert [s for s in PHI if s.encode() in everything] == []
    assert b"Doe" not in everything and b"Jane" not in everything
    stored = root / (row["mask_path"] if mask else row["input_path"])
    assert stored.suffix == ".dcm"  # decided from the content: the client called it .png
    original = tmp_path / "original.dcm"
    original.write_bytes(mask if mask else data)
    np.testing.assert_array_equal(read_image(stored).array, read_image(original).array)  # the pixels stay


def test_random_bytes_starting_like_dicom_are_not_taken_for_dicom() -> None:
    from medsight.io.dicom import is_dicom_bytes

    rng = np.random.default_rng(0)
    junk = [prefix + rng.bytes(300) for prefix in (b"\x08\x00", b"\x02\x00") for _ in range(50)]
    assert [j[:8] for j in junk if is_dicom_bytes(j)] == []
    assert is_dicom_bytes(_without_preamble(dicom_bytes())) and is_dicom_bytes(_bare_dataset(dicom_bytes()))
