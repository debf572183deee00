"""Errors a person can act on.

Every error raised for bad input is a :class:`MedsightError`. Its message names the
file (or setting) at fault, what was wrong and what to do about it, so the CLI can print
it as one line and the service can answer 4xx with the same text.

Example:
    >>> raise UnreadableFileError("scan.dcm", "the file is empty (0 bytes)", "re-export it from the PACS")
"""

from __future__ import annotations

from pathlib import Path


class MedsightError(Exception):
    """Base class: ``<where>: <what was wrong>; <what to do>``."""

    def __init__(self, where: str | Path | None, problem: str, fix: str | None = None) -> None:
        self.where = str(where) if where is not None else None
        self.problem = problem
        self.fix = fix
        text = problem if self.where is None else f"{self.where}: {problem}"
        if fix:
            text = f"{text}; {fix}"
        super().__init__(text)


class UnreadableFileError(MedsightError):
    """A file exists but cannot be decoded (truncated, empty, not what its name says)."""


class ImageTooLargeError(UnreadableFileError):
    """The header declares more voxels (or pixels) than the reader's limit; refused before decoding."""


class UnsupportedFileError(MedsightError):
    """A file type or encoding medsight does not read."""


class MissingDecoderError(UnsupportedFileError):
    """A compressed DICOM transfer syntax whose decoder package is not installed."""


class InvalidImageError(MedsightError):
    """The pixels were read but are unusable (NaN, wrong number of dimensions, empty)."""


class DatasetError(MedsightError):
    """A data set layout problem: missing file, unknown label, empty class folder, bad split."""


class ConfigError(MedsightError):
    """A configuration value that is invalid or inconsistent."""


class BundleError(MedsightError):
    """A model bundle that is missing, incomplete or from an incompatible version."""


class OutputWriteError(MedsightError):
    """A file medsight writes could not be written: the disk is full, or the folder is read-only."""
