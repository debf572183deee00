"""The service's request middleware: every request counted and timed, and no unexpected error unanswered.

Example:
    >>> app.add_middleware(ObserveRequests, metrics=metrics)
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from time import perf_counter

from fastapi.responses import JSONResponse

from medsight.serve.metrics import Metrics

log = logging.getLogger("medsight.serve")


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
