"""What a DICOM file must pass before its pixels are decoded, and the errors when it does not.

* a DICOMDIR is an index of other files, never an image (:func:`refuse_directory`);
* NumberOfFrames x Rows x Columns x SamplesPerPixel within the voxel limit
  (:func:`declared_shape`, checked by the readers with :func:`medsight.io.limits.check_voxels`);
* a deflated data set inflates to no more than that limit allows (:func:`check_deflated_size`):
  pydicom inflates the whole stream before it parses a single element;
* a file that ends before its pixel data, or whose uncompressed pixel data is shorter than
  its header declares, is truncated (:func:`no_pixel_data`, :func:`check_native_length`);
* anything else pydicom or a pixel decoder raises becomes an
  :class:`~medsight.errors.UnreadableFileError` (:func:`corrupt_as_unreadable`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
from pydicom import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from medsight.errors import UnreadableFileError, UnsupportedFileError
from medsight.io.limits import DECODE_ERRORS, MAX_BYTES_PER_VALUE, check_inflated_size, resolve_max_voxels

#: What pydicom raises on a damaged file (it has no single base class for these).
READ_ERRORS = (InvalidDicomError, BytesLengthException, *DECODE_ERRORS)
#: The SOP class of a DICOMDIR, an index that refers to other files.
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
#: Room for the non-pixel elements of a deflated data set, on top of its pixels.
DEFLATED_HEADER_BYTES = 64 << 20
UNDEFINED_LENGTH = 0xFFFFFFFF
#: What the voxel limit counts in a single file.
DECLARED = "the header (frames x rows x columns x samples)"
REEXPORT = "re-export the file from the PACS or scanner"
_COPY_AGAIN = "export or copy it again"
_LONG_LENGTH_VRS = (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")


@contextmanager
def corrupt_as_unreadable(path: str | Path) -> Iterator[None]:
    """Turn what pydicom or a pixel decoder raises on a damaged file into an :class:`UnreadableFileError`."""
    try:
        yield
    except READ_ERRORS as err:
        raise UnreadableFileError(path, f"the DICOM file is corrupt ({type(err).__name__}: {err})", REEXPORT) from err


def number_of_frames(ds: Dataset) -> int:
    """NumberOfFrames, 1 when absent."""
    return max(int(ds.get("NumberOfFrames") or 1), 1)


def declared_shape(ds: Dataset) -> tuple[int, int, int, int]:
    """``(frames, rows, columns, samples per pixel)`` as the header declares them, before decoding."""
    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    return number_of_frames(ds), rows, columns, int(ds.get("SamplesPerPixel") or 1)


def is_dicomdir(ds: Dataset) -> bool:
    """A DICOMDIR: the Media Storage Directory SOP class, or a directory record sequence."""
    sop_class = str(ds.file_meta.get("MediaStorageSOPClassUID", "") or ds.get("SOPClassUID", ""))
    return sop_class == MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in ds


def refuse_directory(path: Path, ds: Dataset, self_contained: bool) -> None:
    """A DICOMDIR is an index of other files, never an image; an upload is told it must be one file."""
    if not is_dicomdir(ds):
        return
    if self_contained:
        raise UnsupportedFileError(
            path,
            "it is a DICOMDIR, an index that refers to other files; an upload must be one self-contained file",
            "send one DICOM Part-10 image instance (a .dcm), a .nrrd with attached data or a .nii/.nii.gz",
        )
    raise UnsupportedFileError(
        path, "it is a DICOMDIR, an index of other files, not an image", "pass the folder that holds the image files"
    )


def check_deflated_size(path: Path, max_voxels: int | None) -> None:
    """Refuse a deflated data set that would inflate past the voxel limit's bytes, before pydicom inflates it.

    Reads the file meta group (explicit VR little endian) to find the transfer syntax and
    where the data set starts; does nothing for any other transfer syntax.
    """
    with open(path, "rb") as f:
        data_start, syntax = _file_meta_end(f)
        if syntax != DeflatedExplicitVRLittleEndian:
            return
        f.seek(data_start)
        limit = resolve_max_voxels(max_voxels) * MAX_BYTES_PER_VALUE + DEFLATED_HEADER_BYTES
        check_inflated_size(path, f, "deflate", limit)


def _file_meta_end(f) -> tuple[int, str]:  # noqa: ANN001 (a binary file)
    """Where the file meta group (0002) ends, and its TransferSyntaxUID (empty if none)."""
    head = f.read(132)
    offset = 132 if head[128:132] == b"DICM" else 0
    syntax = ""
    f.seek(offset)
    while len(element := f.read(8)) == 8 and struct.unpack_from("<H", element)[0] == 0x0002:
        vr = element[4:6]
        if vr in _LONG_LENGTH_VRS:
            length = struct.unpack("<I", f.read(4))[0]
        else:
            length = struct.unpack_from("<H", element, 6)[0]
        value = f.read(length)
        if struct.unpack_from("<H", element, 2)[0] == 0x0010:
            syntax = value.rstrip(b"\0 ").decode("ascii", "replace")
        offset = f.tell()
    return offset, syntax


def no_pixel_data(ds: Dataset, path: str | Path) -> None:
    """Raise for a file without pixel data: truncated if it ends inside an element, else not an image."""
    kind = str(UID(str(ds.get("SOPClassUID", ""))).name) if "SOPClassUID" in ds else "this object"
    if _ends_early(Path(path), ds):
        raise UnreadableFileError(
            path, f"the file ends inside its header, before any pixel data ({kind}): it is truncated", _COPY_AGAIN
        )
    raise UnsupportedFileError(
        path,
        f"no pixel data ({kind}, modality {ds.get('Modality', '?')}); it is not an image",
        "pass an image file (CT, MR, CR, US, ...) or leave this file out of the image folder",
    )


def _ends_early(path: Path, ds: Dataset) -> bool:
    """Whether the file stops inside its last element (pydicom keeps what it could read of it).

    The elements as read, before pydicom converts them, know where their value starts and
    how long it should be; a value that would end past the end of the file, or a tail too
    short to hold the next element's tag, means the file was cut. (A deflated data set's
    offsets are in the inflated stream; a cut one fails to inflate instead.)
    """
    if ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        return False
    as_read = pydicom.dcmread(path, force=True)
    ends = [
        element.value_tell + element.length
        for element in (as_read.get_item(tag) for tag in as_read.keys())  # noqa: SIM118 (iter converts)
        if isinstance(element, RawDataElement) and element.length != UNDEFINED_LENGTH
    ]
    if not ends:
        return False
    size = path.stat().st_size
    return max(ends) > size or 0 < size - max(ends) < 8


def check_native_length(ds: Dataset, path: str | Path) -> None:
    """Uncompressed pixel data must hold all that rows x columns x frames x samples x bits declare."""
    bits = int(ds.get("BitsAllocated") or 0)
    if not bits:
        return  # pydicom says which element is missing
    frames, rows, columns, samples = declared_shape(ds)
    expected = (frames * rows * columns * samples * bits + 7) // 8
    got = len(ds.PixelData)
    if got < expected:
        raise UnreadableFileError(
            path,
            f"the pixel data is shorter than its {rows} rows x {columns} columns x {frames} frame(s) x "
            f"{samples} sample(s) x {bits} bits declare (got {got:,} of {expected:,} bytes): the file is truncated",
            _COPY_AGAIN,
        )
