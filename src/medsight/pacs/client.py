"""A thin DICOMweb client (QIDO-RS, WADO-RS, STOW-RS) with retries and optional authentication.

Wraps :class:`dicomweb_client.DICOMwebClient`. Every request is retried with exponential
backoff when the PACS cannot be reached, times out or answers 5xx; a 4xx answer is the
caller's mistake and fails at once. Credentials (a basic user/password, or a bearer token
from ``$MEDSIGHT_PACS_TOKEN``) go into the session headers and are never logged or printed.

Query results carry UIDs, dates, modalities and descriptions only, never the patient's
name, ID or birth date.

Example:
    >>> client = PacsClient("http://localhost:8042/dicom-web")
    >>> [s.study_uid for s in client.studies(modality="CT")]
    ['1.2.392.200103...']
    >>> files = client.retrieve_series(study_uid, series_uid, Path("work/ct"))
"""

from __future__ import annotations

import fnmatch
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from medsight.errors import MedsightError

log = logging.getLogger(__name__)

T = TypeVar("T")

TOKEN_ENV = "MEDSIGHT_PACS_TOKEN"
PAGE = 500  #: QIDO results asked for per request

#: QIDO fields asked for (and the only ones read back): no patient-identifying attribute.
STUDY_FIELDS = ("StudyInstanceUID", "StudyDate", "ModalitiesInStudy", "StudyDescription",
                "NumberOfStudyRelatedSeries")
SERIES_FIELDS = ("SeriesInstanceUID", "Modality", "SeriesDescription", "SeriesNumber",
                 "NumberOfSeriesRelatedInstances")


class PacsError(MedsightError):
    """The PACS refused a request (4xx), or answered something unusable."""


class PacsUnavailableError(PacsError):
    """The PACS could not be reached (connection refused, timeout, 5xx) after every retry."""


@dataclass(frozen=True)
class SeriesFilter:
    """Which series a model applies to: a modality (``CT``) and a series-description glob (``*liver*``).

    Both are case-insensitive; ``None`` matches anything.
    """

    modality: str | None = None
    description: str | None = None

    def matches(self, modality: str, description: str) -> bool:
        if self.modality and modality.upper() != self.modality.upper():
            return False
        return not self.description or fnmatch.fnmatch(description.lower(), self.description.lower())


@dataclass(frozen=True)
class StudyInfo:
    """One study as QIDO-RS lists it."""

    study_uid: str
    date: str
    modalities: tuple[str, ...]
    description: str
    n_series: int | None


@dataclass(frozen=True)
class SeriesRef:
    """One series of a study as QIDO-RS lists it."""

    study_uid: str
    series_uid: str
    modality: str
    description: str
    number: int | None
    n_instances: int | None


def backoff_delays(attempts: int, delay: float, max_delay: float) -> list[float]:
    """The waits between ``attempts`` tries: ``delay``, doubling each time, capped at ``max_delay``.

    Example:
        >>> backoff_delays(5, 0.5, 3.0)
        [0.5, 1.0, 2.0, 3.0]
    """
    return [min(delay * 2**k, max_delay) for k in range(max(attempts - 1, 0))]


def with_retries(call: Callable[[], T], *, what: str, attempts: int, delay: float, max_delay: float,
                 sleep: Callable[[float], None] = time.sleep) -> T:
    """Run ``call``; on a connection error, timeout or 5xx wait and try again, up to ``attempts`` times.

    Raises:
        PacsUnavailableError: every attempt failed for a transient reason.
        PacsError: the PACS answered 4xx (not retried).
    """
    import requests

    waits = backoff_delays(attempts, delay, max_delay)
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status < 500:
                raise PacsError(what, f"the PACS answered HTTP {status}",
                                "check the URL, the UIDs and the credentials") from exc
            reason = f"HTTP {status}"
        except (requests.ConnectionError, requests.Timeout) as exc:
            reason = type(exc).__name__
        if attempt == attempts:
            raise PacsUnavailableError(what, f"the PACS is unreachable ({reason}) after {attempts} attempt(s)",
                                       "check that it is running and the --url, or retry later")
        log.warning("%s: %s, retry %d/%d in %.1f s", what, reason, attempt, attempts - 1, waits[attempt - 1])
        sleep(waits[attempt - 1])
    raise AssertionError("unreachable")  # pragma: no cover (the loop returns or raises)


def _value(item: dict[str, Any], keyword: str) -> Any:
    """One attribute of a DICOM JSON object (first value, or the list for multi-valued ones)."""
    from pydicom.datadict import tag_for_keyword

    element = item.get(f"{tag_for_keyword(keyword):08X}") or {}
    values = element.get("Value") or []
    if keyword == "ModalitiesInStudy":
        return tuple(str(v) for v in values)
    return values[0] if values else None


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


class PacsClient:
    """A DICOMweb endpoint with retries.

    Args:
        url: the DICOMweb root, e.g. ``http://pacs:8042/dicom-web``.
        user / password: HTTP basic authentication (optional).
        token: a bearer token; default ``$MEDSIGHT_PACS_TOKEN`` when set. Never logged.
        attempts: tries per request (1 = no retry).
        delay / max_delay: the first wait between tries and its cap, in seconds (doubling).
        timeout: seconds per HTTP request.
        sleep: how to wait (tests pass a recorder).

    Raises:
        PacsError: both a user and a token are given, or a user without a password.
    """

    def __init__(self, url: str, *, user: str | None = None, password: str | None = None, token: str | None = None,
                 attempts: int = 4, delay: float = 0.5, max_delay: float = 8.0, timeout: float = 30.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        from dicomweb_client import DICOMwebClient
        from dicomweb_client.session_utils import create_session, create_session_from_user_pass

        token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        if user and token:
            raise PacsError("authentication", f"both a user and a bearer token (${TOKEN_ENV}) are set",
                            "use one of them")
        if user and password is None:
            raise PacsError("authentication", f"user {user!r} has no password", "pass --password as well")
        if attempts < 1:
            raise PacsError(f"attempts={attempts}", "must be at least 1", "use 1 for no retry")
        session = create_session_from_user_pass(user, password) if user else create_session()
        if token:
            session.headers["Authorization"] = f"Bearer {token}"
        self.url = url.rstrip("/")
        self.attempts, self.delay, self.max_delay, self.sleep = attempts, delay, max_delay, sleep
        self._web = DICOMwebClient(self.url, session=session, timeout=timeout)
        self._web.set_http_retry_params(retry=False)  # its own retry waits up to 30 s per call, unconfigurably

    def __repr__(self) -> str:  # no credentials in logs
        return f"PacsClient({self.url!r})"

    def _call(self, what: str, call: Callable[[], T]) -> T:
        return with_retries(call, what=f"{self.url} {what}", attempts=self.attempts, delay=self.delay,
                            max_delay=self.max_delay, sleep=self.sleep)

    def _paged(self, what: str, key: str, limit: int | None,
               search: Callable[[int, int], list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """Page through a QIDO search (``PAGE`` results a request) until a short page, ``limit``, or a page that
        brings nothing new (servers that ignore ``offset`` answer the first page again)."""
        found: dict[str, dict[str, Any]] = {}
        while limit is None or len(found) < limit:
            count = PAGE if limit is None else min(PAGE, limit - len(found))
            page = self._call(what, lambda count=count: search(len(found), count))
            fresh = {str(_value(item, key)): item for item in page if str(_value(item, key)) not in found}
            found.update(fresh)
            if len(page) < count or not fresh:
                break
        return list(found.values())

    def studies(self, *, modality: str | None = None, limit: int | None = None) -> list[StudyInfo]:
        """The studies on the PACS (QIDO-RS), optionally those holding a modality."""
        filters = {"ModalitiesInStudy": modality.upper()} if modality else None
        found = self._paged("QIDO studies", "StudyInstanceUID", limit, lambda offset, count: (
            self._web.search_for_studies(fields=STUDY_FIELDS, search_filters=filters, offset=offset, limit=count)))
        studies = [StudyInfo(
            study_uid=str(_value(item, "StudyInstanceUID")), date=str(_value(item, "StudyDate") or ""),
            modalities=_value(item, "ModalitiesInStudy"), description=str(_value(item, "StudyDescription") or ""),
            n_series=_int(_value(item, "NumberOfStudyRelatedSeries")),
        ) for item in found]
        if modality:  # some servers ignore the filter
            studies = [s for s in studies if not s.modalities or modality.upper() in s.modalities]
        return studies

    def series(self, study_uid: str, *, where: SeriesFilter | None = None) -> list[SeriesRef]:
        """The series of one study (QIDO-RS), those matching ``where`` only."""
        found = self._paged(f"QIDO series of study {study_uid}", "SeriesInstanceUID", None, lambda offset, count: (
            self._web.search_for_series(study_instance_uid=study_uid, fields=SERIES_FIELDS, offset=offset,
                                        limit=count)))
        series = [SeriesRef(
            study_uid=study_uid, series_uid=str(_value(item, "SeriesInstanceUID")),
            modality=str(_value(item, "Modality") or ""), description=str(_value(item, "SeriesDescription") or ""),
            number=_int(_value(item, "SeriesNumber")), n_instances=_int(_value(item, "NumberOfSeriesRelatedInstances")),
        ) for item in found]
        where = where or SeriesFilter()
        return [s for s in series if where.matches(s.modality, s.description)]

    def retrieve_series(self, study_uid: str, series_uid: str, folder: str | Path) -> list[Path]:
        """Download a series (WADO-RS) into ``folder`` as ``<SOPInstanceUID>.dcm`` files.

        Raises:
            PacsError: the series is empty or unknown.
        """
        datasets = self._call(f"WADO series {series_uid}",
                              lambda: self._web.retrieve_series(study_uid, series_uid))
        if not datasets:
            raise PacsError(f"series {series_uid}", "the PACS returned no instance",
                            "check the study and series UIDs with `medsight pacs query`")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for dataset in datasets:
            path = folder / f"{dataset.SOPInstanceUID}.dcm"
            dataset.save_as(path, enforce_file_format=True)
            paths.append(path)
        return paths

    def store(self, files: Sequence[str | Path], *, study_uid: str) -> list[str]:
        """Upload DICOM files (STOW-RS) into a study; the stored SOPInstanceUIDs.

        Raises:
            PacsError: the PACS refused one of the instances.
        """
        import pydicom

        datasets = [pydicom.dcmread(f) for f in files]
        answer = self._call(f"STOW into study {study_uid}",
                            lambda: self._web.store_instances(datasets, study_instance_uid=study_uid))
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            raise PacsError(f"STOW into study {study_uid}", f"the PACS refused {len(failed)} instance(s)",
                            "see the PACS log for the reason")
        return [str(ds.SOPInstanceUID) for ds in datasets]
