"""HTTP-facing errors and the status code every MedsightError maps to.

The service answers bad input with the error's own text (where / problem / fix) and the
status code from :func:`status_for`; it keeps serving.
"""

from __future__ import annotations

from typing import Any

from medsight.errors import (
    BundleError,
    ConfigError,
    DatasetError,
    InvalidImageError,
    MedsightError,
    UnreadableFileError,
    UnsupportedFileError,
)


class ServeError(MedsightError):
    """A request the service refuses; ``status`` is the HTTP status code."""

    status = 400


class UnauthorizedError(ServeError):
    status = 401


class PayloadTooLargeError(ServeError):
    status = 413


class NotFoundError(ServeError):
    status = 404


class NotAcceptableError(ServeError):
    status = 406


class MissingFieldError(ServeError):
    status = 422


class ExplainUnavailableError(ServeError):
    status = 501


class NotReadyError(ServeError):
    status = 503


#: Core errors, most specific first: a file we do not read is 415, a file that is broken is 400,
#: pixels or geometry the model cannot take are 422.
_STATUS: tuple[tuple[type[MedsightError], int], ...] = (
    (UnsupportedFileError, 415),
    (UnreadableFileError, 400),
    (InvalidImageError, 422),
    (ConfigError, 422),
    (DatasetError, 400),
    (BundleError, 500),
)


def status_for(exc: MedsightError) -> int:
    """The HTTP status for an error raised while handling a request."""
    if isinstance(exc, ServeError):
        return exc.status
    return next((code for kind, code in _STATUS if isinstance(exc, kind)), 400)


def error_body(exc: MedsightError) -> dict[str, Any]:
    """The JSON the service answers with: the one-line message and its three parts."""
    return {
        "error": {
            "type": type(exc).__name__,
            "message": str(exc),
            "where": exc.where,
            "problem": exc.problem,
            "fix": exc.fix,
        }
    }


def too_large(limit_bytes: int) -> PayloadTooLargeError:
    """The 413 error for a body over ``limit_bytes`` (from Content-Length or while streaming)."""
    return PayloadTooLargeError(
        "request body",
        f"larger than the service's limit of {limit_bytes / 2**20:g} MB",
        "send a smaller file (crop, downsample or send one series), or restart the service with a larger "
        "--max-body-mb",
    )
