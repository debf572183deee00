"""HTTP-facing errors, the status code every MedsightError maps to, and how the schema describes them.

The service answers bad input with the error's own text (where / problem / fix) and the
status code from :func:`status_for`; it keeps serving. :func:`error_responses` documents
those answers in the OpenAPI schema.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from medsight.errors import (
    BundleError,
    ConfigError,
    DatasetError,
    ImageTooLargeError,
    InvalidImageError,
    MedsightError,
    UnreadableFileError,
    UnsupportedFileError,
)


class ServeError(MedsightError):
    """A request the service refuses; ``status`` is the HTTP status code, ``headers`` go with the answer."""

    status = 400

    @property
    def headers(self) -> dict[str, str]:
        return {}


class UnauthorizedError(ServeError):
    status = 401

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="medsight"'}


class TooManyRequestsError(ServeError):
    """Too many failed authentications from one client; ``retry_after_s`` says when to try again."""

    status = 429

    def __init__(self, where: str, problem: str, fix: str, *, retry_after_s: int) -> None:
        super().__init__(where, problem, fix)
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class PayloadTooLargeError(ServeError):
    status = 413


class NotFoundError(ServeError):
    status = 404


class NotAcceptableError(ServeError):
    status = 406


class MethodNotAllowedError(ServeError):
    status = 405


class MissingFieldError(ServeError):
    status = 422


class ExplainUnavailableError(ServeError):
    status = 501


class NotReadyError(ServeError):
    status = 503


class BusyError(ServeError):
    """The inference queue is full; the client should retry after ``Retry-After`` seconds."""

    status = 503

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


#: Core errors, most specific first: a file we do not read is 415, a file that is broken is 400,
#: pixels or geometry the model cannot take are 422.
_STATUS: tuple[tuple[type[MedsightError], int], ...] = (
    (ImageTooLargeError, 413),
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


def headers_for(exc: MedsightError) -> dict[str, str] | None:
    """Headers that go with the error's answer (``WWW-Authenticate``, ``Retry-After``); None for none."""
    return (exc.headers or None) if isinstance(exc, ServeError) else None


def error_body(exc: MedsightError) -> dict[str, Any]:
    """The JSON the service answers with: the one-line message and its three parts; a refused out-of-domain
    input (which has ``reasons``) also ``out_of_domain: true`` and its ``domain_reasons``."""
    body: dict[str, Any] = {
        "error": {
            "type": type(exc).__name__,
            "message": str(exc),
            "where": exc.where,
            "problem": exc.problem,
            "fix": exc.fix,
        }
    }
    if isinstance(getattr(exc, "reasons", None), list):
        body.update(out_of_domain=True, domain_reasons=list(exc.reasons))
    return body


def too_large(limit_bytes: int) -> PayloadTooLargeError:
    """The 413 error for a body over ``limit_bytes`` (from Content-Length or while streaming)."""
    return PayloadTooLargeError(
        "request body",
        f"larger than the service's limit of {limit_bytes / 2**20:g} MB",
        "send a smaller file (crop, downsample or send one series), or restart the service with a larger "
        "--max-body-mb",
    )


class ErrorDetail(BaseModel):
    """One error: the one-line message and its three parts."""

    type: str
    message: str
    where: str | None
    problem: str
    fix: str | None


class ErrorBody(BaseModel):
    """Every error answer of the service (4xx and 5xx)."""

    error: ErrorDetail


_MEANING = {
    400: "broken input: an unreadable file, a bad field, invalid JSON",
    401: "no API key, or not one of the service's keys",
    404: "not found (an unknown input hash, feedback or registry off)",
    405: "method not allowed",
    406: "no acceptable mask format for the Accept header",
    413: "the body is over the size limit, or the image declares more voxels than the service's limit",
    415: "not an image the service reads, or a file that refers to other files",
    422: "a readable request the model cannot take (missing field, wrong label, wrong dimensions, or an input "
         "outside the model's training domain under out_of_domain refuse: then out_of_domain and domain_reasons)",
    429: "too many failed authentications from this client; wait Retry-After seconds",
    500: "an internal error (logged without patient data)",
    501: "explanations are not installed",
    503: "the model is not loaded yet",
}
#: What every operation can answer with; keyed operations add 401 and 429.
COMMON_ERRORS = (400, 404, 405, 413, 415, 422, 500)
KEYED_ERRORS = (401, 429)


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entries for error ``codes``: the :class:`ErrorBody` schema and its meaning."""
    responses: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        responses[code] = {"model": ErrorBody, "description": _MEANING[code]}
    if 429 in codes:
        responses[429]["headers"] = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
    if 401 in codes:
        responses[401]["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return responses
