"""From an HTTP request to a decoded :class:`~medsight.data.sample.Sample`.

The body (multipart field ``file``, or the raw body) is read with a size limit that is
checked against ``Content-Length`` first and again while the bytes stream in. The file type
is sniffed from its first bytes (DICOM ``DICM`` at offset 128, PNG/JPEG magic, gzip ->
``.nii.gz``, a NIfTI header size of 348/540 -> ``.nii``), falling back to the upload's file
name suffix (TIFF, NRRD, DICOM without a preamble), and the bytes go through the same
readers as files on disk via a private temporary file that is deleted afterwards.

Example:
    >>> upload = await read_upload(request, limit_bytes=64 * 2**20)
    >>> sample = sample_from_upload(upload)
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request

from medsight.data.sample import Sample
from medsight.errors import MedsightError, UnreadableFileError, UnsupportedFileError
from medsight.io import SUPPORTED_SUFFIXES, read_image
from medsight.serve.errors import MissingFieldError, too_large

FIELD = "file"
_MAGIC: tuple[tuple[int, bytes, str, str], ...] = (
    (128, b"DICM", ".dcm", "dicom"),
    (0, b"\x89PNG\r\n\x1a\n", ".png", "png"),
    (0, b"\xff\xd8\xff", ".jpg", "jpeg"),
    (0, b"\x1f\x8b", ".nii.gz", "nifti"),
)


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
    """``(suffix, kind)`` for the bytes of an image file.

    Raises:
        UnreadableFileError: no bytes at all.
        UnsupportedFileError: neither the bytes nor the file name say DICOM, NIfTI, PNG or JPEG.
    """
    where = filename or "upload"
    if not data:
        raise UnreadableFileError(where, "the request has no image bytes (empty body)",
                                  f"send the image as multipart field '{FIELD}' or as the raw request body")
    for offset, magic, suffix, kind in _MAGIC:
        if data[offset:offset + len(magic)] == magic:
            return suffix, kind
    header_size = data[:4]
    if header_size in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c", b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c"):
        return ".nii", "nifti"
    name = (filename or "").lower()
    for suffix in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix) and suffix not in (".png", ".jpg", ".jpeg", ".nii.gz", ".nii"):
            return suffix, suffix.lstrip(".")
    raise UnsupportedFileError(
        where,
        "not a DICOM, NIfTI, PNG or JPEG file (its first bytes match none of them)",
        "send the image file itself (DICOM Part 10, .nii/.nii.gz, .png or .jpg), not a report, archive or "
        "screenshot of it",
    )


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


async def _multipart_file(request: Request, body: bytes) -> tuple[bytes, str | None]:
    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=16)
    except Exception as exc:  # starlette / python-multipart raise several parser error types
        raise UnreadableFileError("multipart body", f"could not be parsed ({type(exc).__name__})",
                                  f"send a multipart/form-data body with the image in field '{FIELD}'") from exc
    try:
        item = form.get(FIELD)
        if item is None or isinstance(item, str):
            raise MissingFieldError(
                "multipart body",
                f"has no file field '{FIELD}' (fields: {', '.join(form.keys()) or 'none'})",
                f"attach the image as '{FIELD}', e.g. curl -F {FIELD}=@scan.dcm",
            )
        return await item.read(), Path(item.filename).name if item.filename else None
    finally:
        await form.close()


def sample_from_upload(upload: Upload) -> Sample:
    """Decode the upload with the reader for its type; errors name the upload, not the temp file.

    Raises:
        MedsightError: whatever the reader raises for a broken or unusable file.
    """
    handle, name = tempfile.mkstemp(suffix=upload.suffix, prefix="medsight-upload-")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(upload.data)
        try:
            sample = read_image(name)
        except MedsightError as exc:
            raise type(exc)(upload.where, exc.problem, exc.fix) from None
        sample.meta["path"] = upload.where
        return sample
    finally:
        os.unlink(name)
