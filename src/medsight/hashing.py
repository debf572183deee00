"""SHA-256 of files, read in blocks: bundle versions, export records, duplicate detection.

Example:
    >>> file_sha256("runs/demo/model/weights.safetensors")
    '9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08'
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_BLOCK = 1 << 20


def files_sha256(*paths: str | Path) -> str:
    """Hex SHA-256 of the files' bytes one after the other, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    for path in paths:
        with Path(path).open("rb") as handle:
            for block in iter(lambda: handle.read(_BLOCK), b""):  # noqa: B023 - used at once, in this loop
                digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of one file."""
    return files_sha256(path)
