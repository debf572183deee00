"""What a reader accepts: a voxel limit checked on the header, and the errors of a damaged file.

A small compressed file can declare a huge image: a 0.5 MB ``.nii.gz`` of zeros that
declares 1024x1024x512 voxels, or a 17 KB PNG of 12000x12000 pixels. Every reader reads
the declared size first and refuses it with :class:`~medsight.errors.ImageTooLargeError`
when it is over the limit, so the cost of a refusal is the cost of reading a header.

The limit counts every decoded value: all spatial axes times channels (or frames, or
samples per pixel). The command line allows :data:`CLI_MAX_VOXELS` (a 1024^3 volume);
the service passes the stricter :data:`SERVICE_MAX_VOXELS`. Either can be changed with the
environment variable ``MEDSIGHT_MAX_VOXELS``, or per call with ``max_voxels=``.

Some libraries inflate a whole compressed payload whatever the header declares (pynrrd's
gzip/bzip2 data, pydicom's deflated data sets); :func:`check_inflated_size` inflates such a
stream first in bounded steps, keeping nothing, and refuses one that holds more than declared.

A decoding library given a damaged file raises whatever its code trips over (a
``KeyError``, an ``AttributeError``, ``zlib.error``, ...). :data:`DECODE_ERRORS` lists the
built-in ones; each reader catches them, with its library's own, around the library call
and raises an :class:`~medsight.errors.UnreadableFileError` naming the file instead.

Example:
    >>> check_voxels("big.nii.gz", (1024, 1024, 512), SERVICE_MAX_VOXELS)
    Traceback (most recent call last):
    medsight.errors.ImageTooLargeError: big.nii.gz: the header declares 1024x1024x512 = 536,870,912 voxels, ...
"""

from __future__ import annotations

import bz2
import math
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from medsight.errors import ConfigError, ImageTooLargeError

#: The command line's default: 2^30 values (4 GiB as float32), a 1024^3 volume.
CLI_MAX_VOXELS = 2**30
#: The service's default: 2^26 values (256 MiB as float32), e.g. 512x512x256 or 8192x8192.
SERVICE_MAX_VOXELS = 2**26
#: Built-in exceptions the decoding libraries (pydicom, nibabel, pynrrd, Pillow, zlib, numpy)
#: raise on damaged input; ``RuntimeError`` covers ``NotImplementedError`` (pydicom's unknown
#: VR) and the pixel decoders' failures. MemoryError is not here: with the voxel limit in
#: front, it is left to the last safety net of :func:`medsight.io.read_image`.
DECODE_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    AttributeError,
    KeyError,
    IndexError,
    OverflowError,
    RuntimeError,
    EOFError,
    OSError,
    struct.error,
    zlib.error,
)
#: The environment variable that overrides the default limit.
MAX_VOXELS_VARIABLE = "MEDSIGHT_MAX_VOXELS"
#: The most bytes one decoded value can take (float64 / int64): bounds a payload from a voxel count.
MAX_BYTES_PER_VALUE = 8
_STEP = 1 << 20


def default_max_voxels() -> int:
    """``$MEDSIGHT_MAX_VOXELS`` when set (a positive whole number), else :data:`CLI_MAX_VOXELS`.

    Raises:
        ConfigError: the variable is set to anything but a positive whole number.
    """
    text = os.environ.get(MAX_VOXELS_VARIABLE)
    if text is None or not text.strip():
        return CLI_MAX_VOXELS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(
            MAX_VOXELS_VARIABLE,
            f"must be a positive whole number of voxels, got {text!r}",
            f"set it to e.g. {CLI_MAX_VOXELS} (2^30), or unset it for that default",
        )
    return value


def resolve_max_voxels(max_voxels: int | None) -> int:
    """The limit a reader applies: ``max_voxels``, or :func:`default_max_voxels` when None.

    Raises:
        ConfigError: ``max_voxels`` is not a positive whole number, or the variable is bad.
    """
    if max_voxels is None:
        return default_max_voxels()
    if isinstance(max_voxels, bool) or not isinstance(max_voxels, int) or max_voxels <= 0:
        raise ConfigError("max_voxels", f"must be a positive whole number, got {max_voxels!r}", "pass e.g. 2**26")
    return max_voxels


def check_voxels(
    where: str | Path, shape: Iterable[int], max_voxels: int | None, *, source: str = "the header"
) -> None:
    """Refuse an image whose declared ``shape`` holds more than ``max_voxels`` values.

    Args:
        where: the file (or folder) named in the error.
        shape: the declared size of every axis, channels and frames included.
        max_voxels: the limit; None for :func:`default_max_voxels`.
        source: what declared the shape, for the message (``"the series' 120 headers"``).

    Raises:
        ImageTooLargeError: the product of ``shape`` is over the limit.
    """
    limit = resolve_max_voxels(max_voxels)
    sizes = [int(n) for n in shape]
    count = math.prod(sizes)
    if count > limit:
        raise ImageTooLargeError(
            where,
            f"{source} declares {'x'.join(str(n) for n in sizes)} = {count:,} voxels, "
            f"more than the limit of {limit:,}",
            f"crop or downsample it, or raise the limit with {MAX_VOXELS_VARIABLE} (medsight serve: --max-voxels)",
        )


def check_inflated_size(where: str | Path, stream: BinaryIO, codec: str, limit_bytes: int) -> None:
    """Inflate ``stream`` in steps of at most 1 MiB, keeping nothing; refuse it past ``limit_bytes``.

    Args:
        where: the file named in the error.
        stream: positioned at the compressed data; read to its end (or the end of the
            first gzip member / bzip2 stream, as the libraries do).
        codec: ``"gzip"``, ``"deflate"`` (raw, as DICOM's deflated transfer syntax) or ``"bzip2"``.
        limit_bytes: the most bytes the header allows, e.g. voxels x 8.

    Raises:
        ImageTooLargeError: the data inflates to more than ``limit_bytes``.
        zlib.error, OSError, EOFError: the compressed data is corrupt (the reader reports it).
    """
    inflater = {
        "gzip": lambda: zlib.decompressobj(zlib.MAX_WBITS | 16),
        "deflate": lambda: zlib.decompressobj(-zlib.MAX_WBITS),
        "bzip2": bz2.BZ2Decompressor,
    }[codec]()
    total = 0
    while not inflater.eof and (chunk := stream.read(1 << 16)):
        for produced in _inflate_steps(inflater, chunk):
            total += produced
            if total > limit_bytes:
                raise ImageTooLargeError(
                    where,
                    f"its {codec} data inflates to more than {limit_bytes:,} bytes, more than its header declares",
                    "the file is corrupt or built to exhaust memory; export it again from its source",
                )


def _inflate_steps(inflater: object, data: bytes) -> Iterator[int]:
    """The sizes of the bounded pieces one compressed chunk inflates to."""
    if isinstance(inflater, bz2.BZ2Decompressor):
        yield len(inflater.decompress(data, _STEP))
        while not inflater.eof and not inflater.needs_input:
            yield len(inflater.decompress(b"", _STEP))
        return
    while data and not inflater.eof:  # type: ignore[attr-defined]
        yield len(inflater.decompress(data, _STEP))  # type: ignore[attr-defined]
        data = inflater.unconsumed_tail  # type: ignore[attr-defined]
