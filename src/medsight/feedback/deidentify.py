"""What the feedback store keeps of an uploaded file, so that nothing patient-identifying is stored.

The type is decided from the bytes, never from the client's file name, and every DICOM is
de-identified whatever its role (input image, corrected mask) or name:

* DICOM (Part 10, or a bare dataset without the 128-byte preamble and ``DICM`` marker):
  de-identified with :class:`medsight.io.anonymize.Anonymizer` (PS3.15 basic profile subset:
  names, dates and IDs emptied or pseudonymised, UIDs remapped, private tags removed); the
  pixels and the geometry tags stay, so the copy reads exactly like the original.
* PNG / JPEG: the decoded pixels re-encoded as PNG, dropping text chunks and EXIF.
* NIfTI: the header's free-text fields cleared and its extensions (which may hold a DICOM
  header) dropped.
* the rest (TIFF, NRRD...): the bytes as uploaded.

Example:
    >>> suffix, clean = deidentified(data, "dicom")
"""

from __future__ import annotations

import io

from medsight.errors import MedsightError
from medsight.io.dicom import is_dicom_bytes


class DeidentificationError(MedsightError):
    """An upload that cannot be de-identified, so the feedback store refuses to keep it."""


def deidentified(data: bytes, kind: str) -> tuple[str, bytes]:
    """``(suffix, bytes)`` of the copy to keep of an upload whose content type is ``kind``.

    Raises:
        DeidentificationError: the bytes cannot be decoded and written again without the identifying fields.
    """
    try:
        if kind == "dicom" or is_dicom_bytes(data):
            return ".dcm", _clean_dicom(data)
        if kind in ("png", "jpeg"):
            return ".png", _clean_picture(data)
        if kind == "nifti":
            return ".nii", _clean_nifti(data)
    except Exception as exc:  # the decoders raise many types; the upload was read before, so this is rare
        raise DeidentificationError(
            "upload", f"could not be de-identified for the feedback store ({type(exc).__name__})",
            "send the file as exported by the scanner or PACS; nothing was stored") from None
    return f".{kind}", data


def _clean_dicom(data: bytes) -> bytes:
    import pydicom
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    from medsight.io.anonymize import Anonymizer

    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    if "TransferSyntaxUID" not in ds.file_meta:  # a bare dataset: say how it was encoded
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    Anonymizer().dataset(ds)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _clean_picture(data: bytes) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def _clean_nifti(data: bytes) -> bytes:
    """Streamed, so only the bytes the header declares are decompressed (not a gzip bomb's tail)."""
    import gzip

    import nibabel as nib

    stream = gzip.GzipFile(fileobj=io.BytesIO(data)) if data[:2] == b"\x1f\x8b" else io.BytesIO(data)
    with stream:
        head = stream.read(4)
        stream.seek(0)
        nifti2 = head in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c")
        image = (nib.Nifti2Image if nifti2 else nib.Nifti1Image).from_stream(stream)
        for field in ("descrip", "aux_file", "db_name"):
            if field in image.header:
                image.header[field] = b""
        image.header.extensions.clear()
        return image.to_bytes()
