"""Corrupted copies of real DICOM and NIfTI files, made at test time with a fixed seed.

The corpus of issue 31: random truncations, header bit flips and wrong transfer-syntax UIDs
of 10 real DICOM files; bad datatype codes, huge dimensions, truncations, flipped header
bytes and impossible data offsets of real NIfTI volumes. The sources come from the shared
data (``$MEDSIGHT_SHARED_DATA`` or ``../shared/data``); where it is absent, from the test
files that pydicom and nibabel ship. The same seed gives the same bytes on every machine.

Example:
    >>> paths = corrupt_dicom_corpus(tmp_path / "dicom", n=100, seed=0)
    >>> paths[0].name
    '000_CT_small_truncate.dcm'
"""

from __future__ import annotations

import gzip
import os
import random
import struct
from pathlib import Path

#: Real DICOM files of the shared data (relative to its root): CT, MR, enhanced multi-frame,
#: RGB ultrasound, a file without a preamble, overlays, a real CT slice and an ADC slice.
SHARED_DICOM = (
    "dicom/pydicom/CT_small.dcm",
    "dicom/pydicom/MR_small.dcm",
    "dicom/pydicom/emri_small.dcm",
    "dicom/pydicom/eCT_Supplemental.dcm",
    "dicom/pydicom/US1_UNCR.dcm",
    "dicom/pydicom/OBXXXX1A.dcm",
    "dicom/pydicom/MR-SIEMENS-DICOM-WithOverlays.dcm",
    "dicom/pydicom/693_UNCR.dcm",
    "dicom/dcmqi/segmentations/ct-3slice/01.dcm",
    "dicom/dcmqi/paramaps/pm-example-dcm/701-ADCb500/000000.dcm",
)
#: pydicom's own test files, used when the shared data is absent.
PYDICOM_FALLBACK = (
    "CT_small.dcm",
    "MR_small.dcm",
    "emri_small.dcm",
    "rtdose_1frame.dcm",
    "SC_rgb_small_odd.dcm",
    "ExplVR_BigEnd.dcm",
    "liver_1frame.dcm",
    "examples_palette.dcm",
    "examples_overlay.dcm",
    "no_meta_group_length.dcm",
)
SHARED_NIFTI = ("nifti/example_ct_sm.nii.gz", "nifti/example_ct_sm_T300_output.nii.gz")
#: nibabel's own test volumes, used when the shared data is absent.
NIBABEL_FALLBACK = ("anatomical.nii", "standard.nii.gz")

DICOM_KINDS = ("truncate", "flip_header_bits", "swap_transfer_syntax")
NIFTI_KINDS = ("datatype_999", "huge_dims", "truncate", "flip_header_bytes", "huge_vox_offset")
#: Transfer syntaxes swapped into the file meta: deflate, the other uncompressed ones,
#: compressed ones the pixel data is not in, an unknown UID and a value that is no UID.
SWAPPED_TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.5",
    "1.2.3.4.5.6.7.8.9",
    "not-a-uid",
)
_HEADER_BYTES = 2048


def shared_data_root() -> Path:
    """``$MEDSIGHT_SHARED_DATA`` or ``../shared/data`` next to the repository."""
    repo = Path(__file__).resolve().parents[1]
    return Path(os.environ.get("MEDSIGHT_SHARED_DATA", repo.parent / "shared" / "data"))


def dicom_sources() -> list[Path]:
    """The 10 real DICOM files the corpus is made from (shared data, else pydicom's files)."""
    shared = [shared_data_root() / name for name in SHARED_DICOM]
    if all(path.is_file() for path in shared):
        return shared
    from pydicom.data import get_testdata_file

    return [Path(get_testdata_file(name)) for name in PYDICOM_FALLBACK]


def nifti_sources() -> list[Path]:
    """The real NIfTI volumes the corpus is made from (shared data, else nibabel's files)."""
    shared = [shared_data_root() / name for name in SHARED_NIFTI]
    if all(path.is_file() for path in shared):
        return shared
    from nibabel.testing import data_path

    return [Path(data_path) / name for name in NIBABEL_FALLBACK]


def corrupt_dicom_corpus(out_dir: str | Path, n: int = 100, seed: int = 0) -> list[Path]:
    """Write ``n`` corrupted variants of :func:`dicom_sources` into ``out_dir``.

    Variant ``i`` comes from source ``i % 10``; the kind cycles through
    :data:`DICOM_KINDS` once per round of sources, so each source gets every kind.

    Returns:
        The files, named ``{i:03d}_{source stem}_{kind}.dcm``.
    """
    rng = random.Random(seed)
    sources = dicom_sources()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        source = sources[i % len(sources)]
        kind = DICOM_KINDS[(i // len(sources)) % len(DICOM_KINDS)]
        data = source.read_bytes()
        if kind == "truncate":
            data = data[: rng.randrange(1, len(data))]
        elif kind == "flip_header_bits":
            data = flip_bits(data, rng, start=128, stop=min(_HEADER_BYTES, len(data)), count=rng.randint(1, 8))
        else:
            data = with_transfer_syntax(data, rng.choice(SWAPPED_TRANSFER_SYNTAXES))
        path = out / f"{i:03d}_{source.name.removesuffix('.dcm')}_{kind}.dcm"
        path.write_bytes(data)
        paths.append(path)
    return paths


def corrupt_nifti_corpus(out_dir: str | Path, n: int = 10, seed: int = 0) -> list[Path]:
    """Write ``n`` corrupted variants of :func:`nifti_sources` into ``out_dir``.

    Variant ``i`` comes from source ``i % len(sources)`` and the kind cycles through
    :data:`NIFTI_KINDS`; a gzipped source stays gzipped (truncation cuts the gzip stream).

    Returns:
        The files, named ``{i:03d}_{source stem}_{kind}.nii[.gz]``.
    """
    rng = random.Random(seed)
    sources = nifti_sources()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        source = sources[i % len(sources)]
        kind = NIFTI_KINDS[i % len(NIFTI_KINDS)]
        zipped = source.name.endswith(".gz")
        raw = source.read_bytes()
        raw = gzip.decompress(raw) if zipped else raw
        if kind != "truncate":
            raw = _corrupt_nifti_header(raw, kind, rng)
        data = gzip.compress(raw, mtime=0) if zipped else raw
        if kind == "truncate":
            data = data[: rng.randrange(1, len(data))]
        stem = source.name.removesuffix(".gz").removesuffix(".nii")
        path = out / f"{i:03d}_{stem}_{kind}{'.nii.gz' if zipped else '.nii'}"
        path.write_bytes(data)
        paths.append(path)
    return paths


def flip_bits(data: bytes, rng: random.Random, *, start: int, stop: int, count: int) -> bytes:
    """``data`` with ``count`` random bits flipped between byte ``start`` and ``stop``."""
    buffer = bytearray(data)
    for _ in range(count):
        position = rng.randrange(start, stop)
        buffer[position] ^= 1 << rng.randrange(8)
    return bytes(buffer)


def with_transfer_syntax(data: bytes, uid: str) -> bytes:
    """A DICOM file whose file meta claims ``uid`` while the data set keeps its own encoding.

    A file without a preamble and meta header gets both, with that transfer syntax.
    """
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    if data[128:132] == b"DICM":
        meta, body = _split_file_meta(data)
    else:
        meta, body = FileMetaDataset(), data
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = uid
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return b"\x00" * 128 + b"DICM" + buffer.getvalue() + body


def _split_file_meta(data: bytes):  # noqa: ANN202 (pydicom FileMetaDataset, imported lazily)
    """The file meta group (0002) of a Part-10 file and the bytes that follow it."""
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO

    offset = 132
    while offset + 8 <= len(data) and struct.unpack_from("<H", data, offset)[0] == 0x0002:
        vr = data[offset + 4 : offset + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            offset += 12 + struct.unpack_from("<I", data, offset + 8)[0]
        else:
            offset += 8 + struct.unpack_from("<H", data, offset + 6)[0]
    meta = dcmread(DicomBytesIO(data[:offset]), force=True).file_meta
    return meta, data[offset:]


def _corrupt_nifti_header(raw: bytes, kind: str, rng: random.Random) -> bytes:
    """Uncompressed NIfTI-1 bytes with one header field made impossible."""
    buffer = bytearray(raw)
    order = "<" if struct.unpack_from("<i", raw, 0)[0] == 348 else ">"
    if kind == "datatype_999":
        struct.pack_into(f"{order}h", buffer, 70, 999)
    elif kind == "huge_dims":
        ndim = struct.unpack_from(f"{order}h", raw, 40)[0]
        for axis in range(1, max(min(ndim, 7), 3) + 1):
            struct.pack_into(f"{order}h", buffer, 40 + 2 * axis, rng.randint(20000, 32767))
    elif kind == "huge_vox_offset":
        struct.pack_into(f"{order}f", buffer, 108, rng.choice((3.0e38, 1.0e20, -352.0)))
    else:
        for _ in range(rng.randint(2, 8)):
            buffer[rng.randrange(0, 348)] = rng.randrange(256)
    return bytes(buffer)


def nifti_bomb(path: str | Path, shape: tuple[int, ...] = (1024, 1024, 512), dtype: str = "uint8") -> Path:
    """A ``.nii.gz`` of zeros that declares ``shape`` (about 0.5 MB for 1024x1024x512 uint8).

    Written as concatenated gzip members (valid gzip: readers inflate them as one stream),
    so the zeros are compressed once and the volume is never held in memory.
    """
    import nibabel as nib
    import numpy as np

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.dtype(dtype))
    header.set_qform(np.eye(4), code=1)
    header["vox_offset"] = 352
    total = int(np.prod(shape)) * np.dtype(dtype).itemsize
    block = 1 << 24
    zeros = gzip.compress(bytes(block), compresslevel=9, mtime=0)
    with open(path, "wb") as f:
        f.write(gzip.compress(header.binaryblock + b"\0" * 4, mtime=0))  # 4 bytes: no extension
        for _ in range(total // block):
            f.write(zeros)
        f.write(gzip.compress(bytes(total % block), mtime=0))
    return Path(path)


def png_bomb(path: str | Path, width: int, height: int) -> Path:
    """An 8-bit grey PNG of zeros, ``width`` x ``height`` (a few hundred KB), written row block by row block."""
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    compressor = zlib.compressobj(9)
    block = b"\0" * ((width + 1) * 256)  # 256 rows, each a filter byte 0 and its pixels
    parts = [compressor.compress(block) for _ in range(height // 256)]
    parts.append(compressor.compress(b"\0" * ((width + 1) * (height % 256))))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    Path(path).write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")
    )
    return Path(path)
