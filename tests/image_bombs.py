"""Small files that declare huge images (decompression bombs), built without holding the image in memory."""

from __future__ import annotations

import gzip
import io
import struct
import zlib

import numpy as np


def png_of_zeros(width: int, height: int) -> bytes:
    """A valid 8-bit grey PNG of zeros, compressed row by row (never the whole image in memory)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    squeeze = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0, then the pixels
    stream = b"".join(squeeze.compress(row) for _ in range(height)) + squeeze.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", stream) + chunk(b"IEND", b"")


def nifti_gz_of_zeros(shape: tuple[int, ...]) -> bytes:
    """A .nii.gz of uint8 zeros declaring ``shape``, compressed in slabs (never the volume in memory)."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_dtype(np.uint8)
    header.set_data_shape(shape)
    header["vox_offset"] = 352
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as stream:
        stream.write(header.binaryblock + b"\x00" * 4)
        slab = bytes(int(np.prod(shape[:-1])))
        for _ in range(shape[-1]):
            stream.write(slab)
    return out.getvalue()
