"""The service's request middleware and log hygiene: every request counted and timed, no unexpected
error unanswered, security headers on every answer, and no query string in the access log.

Example:
    >>> app.add_middleware(ObserveRequests, metrics=metrics)
    >>> app.add_middleware(SecurityHeaders)
"""

from __future__ import annotations

import logging
import re
import traceback
from pathlib import Path
from time import perf_counter

from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders

from medsight.serve.metrics import Metrics

log = logging.getLogger("medsight.serve")
#: A query string inside a logged request line: from the ``?`` to the next space or quote.
_QUERY = re.compile(r"\?[^\s\"]*")


class ObserveRequests:
    """ASGI middleware: counts and times every request by route template and status, and turns an
    unexpected exception into a 500 JSON answer whose log line holds the error type and the code
    location only (an exception message may quote file contents, so it is never logged)."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = perf_counter()
        status = 0

        async def observed_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        except Exception as exc:
            if status:  # the response has begun; nothing else can be sent
                raise
            where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}"
                                for f in reversed(traceback.extract_tb(exc.__traceback__)[-4:]))
            log.error("%s %s -> 500 %s at %s", scope["method"], scope["path"], type(exc).__name__, where)
            body = {"error": {"type": "InternalError", "message": _INTERNAL, "where": None, "problem": _INTERNAL,
                              "fix": "retry; if it persists, send the operator the time of the request"}}
            await JSONResponse(body, status_code=500)(scope, receive, observed_send)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(endpoint, scope["method"], status or 500, perf_counter() - start)


_INTERNAL = "the service failed on this request (an internal error, logged without patient data)"


class SecurityHeaders:
    """ASGI middleware: ``X-Content-Type-Options: nosniff`` on every answer, and ``Cache-Control: no-store``
    on every ``/v1/*`` answer (predictions, masks, heatmaps, feedback, the model card, their errors), which
    must not be kept by a browser or proxy cache."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        private = scope["path"].startswith("/v1/")

        async def secured_send(message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                if private:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, secured_send)


class RedactQuery(logging.Filter):
    """A logging filter for uvicorn's access log: the query string of the logged path becomes ``?<redacted>``,
    so a key or an identifier sent as ``?api_key=...`` never reaches a log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_without_query(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = _without_query(record.msg)
        return True


def _without_query(text: str) -> str:
    return _QUERY.sub("?<redacted>", text)
