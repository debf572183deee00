"""From an HTTP request to a decoded :class:`~medsight.sample.Sample`.

The body (multipart field ``file``, or the raw body) is read with a size limit that is
checked against ``Content-Length`` first and again while the bytes stream in. The file type
is decided from the content (DICOM ``DICM`` at offset 128 or a bare DICOM dataset, PNG, JPEG,
TIFF, GIF, NRRD magic, gzip -> ``.nii.gz``, a NIfTI header size of 348/540 -> ``.nii``); only a
BMP is taken by its file name. The bytes go through the same readers as files on disk via a
private temporary file that is deleted afterwards, with the service's voxel limit.

An upload is one self-contained file: anything that refers to other files is refused with a
415 before it is read (a detached NRRD header ``.nhdr`` or any NRRD with a ``data file`` field,
an Analyze or NIfTI ``.hdr``/``.img`` pair, a DICOMDIR), so no upload can make the service read
a file of its own.

Example:
    >>> upload = await read_upload(request, limit_bytes=64 * 2**20)
    >>> sample = sample_from_upload(upload, max_voxels=2**26)
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from starlette.datastructures import FormData
from starlette.requests import Request

from medsight.errors import MedsightError, UnreadableFileError, UnsupportedFileError
from medsight.io import read_image
from medsight.io.dicom import is_dicom_bytes
from medsight.sample import Sample
from medsight.serve.errors import MissingFieldError, too_large

FIELD = "file"
_MAGIC: tuple[tuple[int, bytes, str, str], ...] = (
    (128, b"DICM", ".dcm", "dicom"),
    (0, b"\x89PNG\r\n\x1a\n", ".png", "png"),
    (0, b"\xff\xd8\xff", ".jpg", "jpeg"),
    (0, b"\x1f\x8b", ".nii.gz", "nifti"),
    (0, b"NRRD000", ".nrrd", "nrrd"),
    (0, b"II*\x00", ".tif", "tiff"),
    (0, b"MM\x00*", ".tif", "tiff"),
    (0, b"GIF87a", ".gif", "gif"),
    (0, b"GIF89a", ".gif", "gif"),
)
#: First four bytes of a NIfTI-1 (348) or NIfTI-2 (540) header, either byte order.
_NIFTI_SIZES = (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c", b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c")
#: The magic of a NIfTI header whose image is in a separate ``.img`` file (NIfTI-1 at 344, NIfTI-2 at 4).
_NIFTI_PAIR_MAGIC = ((344, b"ni1\x00"), (4, b"ni2\x00"))
#: File names that are one half of a header/data pair, or an index of other files.
_REFERENCING_SUFFIXES = (".nhdr", ".hdr", ".img")
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
_SELF_CONTAINED_FIX = ("send one self-contained image file: DICOM Part 10, .nii/.nii.gz, an attached .nrrd "
                       "(data in the same file), .png, .jpg or .tif")


@dataclass
class Upload:
    """The uploaded bytes, the client's file name (never logged) and the sniffed type."""

    data: bytes
    filename: str | None
    suffix: str
    kind: str

    @property
    def where(self) -> str:
        """How errors name this upload: the client's own file name, else ``upload``."""
        return self.filename or "upload"


def sniff(data: bytes, filename: str | None = None) -> tuple[str, str]:
    """``(suffix, kind)`` for the bytes of an image file, decided from its content.

    Raises:
        UnreadableFileError: no bytes at all.
        UnsupportedFileError: not an image medsight reads, or a file that refers to other files.
    """
    where = filename or "upload"
    if not data:
        raise UnreadableFileError(where, "the request has no image bytes (empty body)",
                                  f"send the image as multipart field '{FIELD}' or as the raw request body")
    name = (filename or "").lower()
    if name.endswith(_REFERENCING_SUFFIXES) or name == "dicomdir":
        raise _refers_elsewhere(where, f"a {Path(name).suffix or 'DICOMDIR'} file is one part of a set of files")
    suffix, kind = _content_type(data, name)
    if kind == "nrrd" and _nrrd_has_data_file(data):
        raise _refers_elsewhere(where, "a NRRD header that names a separate data file ('data file:' field)")
    if kind == "nifti" and any(data[at:at + len(magic)] == magic for at, magic in _NIFTI_PAIR_MAGIC):
        raise _refers_elsewhere(where, "a NIfTI header whose image is in a separate .img file")
    if kind == "dicom" and _is_dicomdir(data):
        raise _refers_elsewhere(where, "a DICOMDIR (an index of other DICOM files), not an image")
    return suffix, kind


def _content_type(data: bytes, name: str) -> tuple[str, str]:
    for offset, magic, suffix, kind in _MAGIC:
        if data[offset:offset + len(magic)] == magic:
            return suffix, kind
    if data[:4] in _NIFTI_SIZES:
        return ".nii", "nifti"
    if is_dicom_bytes(data):  # a DICOM stream without its 128-byte preamble and DICM marker
        return ".dcm", "dicom"
    if name.endswith(".bmp") and data[:2] == b"BM":
        return ".bmp", "bmp"
    raise UnsupportedFileError(
        name or "upload",
        "not a DICOM, NIfTI, NRRD, PNG, JPEG, TIFF or GIF file (its first bytes match none of them)",
        "send the image file itself (DICOM Part 10, .nii/.nii.gz, .png or .jpg), not a report, archive or "
        "screenshot of it",
    )


def _nrrd_has_data_file(data: bytes) -> bool:
    """True when the NRRD header (the lines up to the first blank one) has a ``data file`` field."""
    header = data.split(b"\n\n", 1)[0].decode("latin-1")
    for line in header.splitlines()[1:]:
        field, separator, _ = line.partition(": ")
        if separator and field.strip().lower() in ("data file", "datafile"):
            return True
    return False


def _is_dicomdir(data: bytes) -> bool:
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
    except Exception:  # unreadable: the reader will say so with a clear error
        return False
    return ds.file_meta.get("MediaStorageSOPClassUID") == _DICOMDIR_CLASS or "DirectoryRecordSequence" in ds


def _refers_elsewhere(where: str, what: str) -> UnsupportedFileError:
    return UnsupportedFileError(where, f"{what}; the service reads only self-contained files", _SELF_CONTAINED_FIX)


async def read_body(request: Request, *, limit_bytes: int) -> bytes:
    """The whole request body, refusing more than ``limit_bytes``.

    Raises:
        PayloadTooLargeError: ``Content-Length`` says too much, or the stream goes past the limit.
    """
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit_bytes:
        raise too_large(limit_bytes)
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit_bytes:
            raise too_large(limit_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_upload(request: Request, *, limit_bytes: int) -> Upload:
    """The uploaded image of a multipart (field ``file``) or raw-body request.

    Raises:
        PayloadTooLargeError: over the size limit.
        MissingFieldError: a multipart form without a ``file`` field.
        UnreadableFileError, UnsupportedFileError: empty or not an image (see :func:`sniff`).
    """
    body = await read_body(request, limit_bytes=limit_bytes)
    filename = None
    if request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        data, filename = await _multipart_file(request, body)
    else:
        data = body
    suffix, kind = sniff(data, filename)
    return Upload(data=data, filename=filename, suffix=suffix, kind=kind)


async def parse_form(request: Request, body: bytes, *, max_files: int) -> FormData:
    """The multipart form in ``body`` (already read with its size limit).

    Raises:
        UnreadableFileError: a body the multipart parser refuses (also too many files or fields).
    """
    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        return await Request(request.scope, replay).form(max_files=max_files, max_fields=16)
    except Exception as exc:  # starlette / python-multipart raise several parser error types
        raise UnreadableFileError("multipart body", f"could not be parsed ({type(exc).__name__})",
                                  f"send a multipart/form-data body with the image in field '{FIELD}'") from None


async def _multipart_file(request: Request, body: bytes) -> tuple[bytes, str | None]:
    form = await parse_form(request, body, max_files=1)
    try:
        item = form.get(FIELD)
        if item is None or isinstance(item, str):
            raise MissingFieldError(
                "multipart body",
                f"has no file field '{FIELD}' (fields: {', '.join(form.keys()) or 'none'})",
                f"attach the image as '{FIELD}', e.g. curl -F {FIELD}=@scan.dcm",
            )
        return await item.read(), client_name(item.filename)
    finally:
        await form.close()


def client_name(filename: str | None) -> str | None:
    """The base name of the client's file name (no folders), or None."""
    return Path(filename).name or None if filename else None


def sample_from_upload(upload: Upload, *, max_voxels: int) -> Sample:
    """Decode the upload with the reader for its type, refusing more than ``max_voxels`` values and any
    file that refers to another; errors name the upload, never the temporary file.

    Raises:
        MedsightError: whatever the reader raises for a broken, unusable or too large file.
    """
    handle, name = tempfile.mkstemp(suffix=upload.suffix, prefix="medsight-upload-")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(upload.data)
        try:
            sample = read_image(name, max_voxels=max_voxels, self_contained=True)
        except MedsightError as exc:
            problem = exc.problem.replace(name, upload.where)
            raise type(exc)(upload.where, problem, exc.fix) from None
        sample.meta["path"] = upload.where
        return sample
    finally:
        os.unlink(name)
