"""Request counters and latency histograms in the Prometheus text exposition format (0.0.4).

Written by hand: a few counters and histograms need no client library. The numbers are per
worker process (with ``--workers N`` each worker answers ``/metrics`` for itself).

Example:
    >>> m = Metrics()
    >>> m.observe_request("/v1/predict", "POST", 200, 0.042)
    >>> 'medsight_requests_total{endpoint="/v1/predict",method="POST",status="200"} 1' in m.render()
    True
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

#: Latency bucket upper bounds in seconds.
BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _Histogram:
    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds

    def lines(self, name: str, labels: str) -> list[str]:
        out, running = [], 0
        for bound, count in zip((*BUCKETS, float("inf")), self.counts, strict=True):
            running += count
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            out.append(f'{name}_bucket{{{labels}{"," if labels else ""}le="{le}"}} {running}')
        out.append(f"{name}_sum{{{labels}}} {self.total:.6f}" if labels else f"{name}_sum {self.total:.6f}")
        out.append(f"{name}_count{{{labels}}} {running}" if labels else f"{name}_count {running}")
        return out


class Metrics:
    """Thread-safe counters for the service; :meth:`render` gives the ``/metrics`` text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self._latency: dict[str, _Histogram] = defaultdict(_Histogram)
        self._inference: dict[str, _Histogram] = defaultdict(_Histogram)
        self.model_loads = 0
        self.model_load_seconds: float | None = None

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            self._requests[(endpoint, method, status)] += 1
            self._latency[endpoint].observe(seconds)

    def observe_inference(self, task: str, seconds: float) -> None:
        with self._lock:
            self._inference[task].observe(seconds)

    def model_loaded(self, seconds: float) -> None:
        with self._lock:
            self.model_loads += 1
            self.model_load_seconds = seconds

    def render(self) -> str:
        with self._lock:
            lines = [
                "# HELP medsight_requests_total HTTP requests by endpoint, method and status code.",
                "# TYPE medsight_requests_total counter",
            ]
            for (endpoint, method, status), count in sorted(self._requests.items()):
                lines.append(
                    f'medsight_requests_total{{endpoint="{_escape(endpoint)}",method="{method}",'
                    f'status="{status}"}} {count}'
                )
            lines += [
                "# HELP medsight_request_duration_seconds Time from request to response, by endpoint.",
                "# TYPE medsight_request_duration_seconds histogram",
            ]
            for endpoint, hist in sorted(self._latency.items()):
                lines += hist.lines("medsight_request_duration_seconds", f'endpoint="{_escape(endpoint)}"')
            lines += [
                "# HELP medsight_inference_seconds Model time per image (preprocess, network, postprocess), by task.",
                "# TYPE medsight_inference_seconds histogram",
            ]
            for task, hist in sorted(self._inference.items()):
                lines += hist.lines("medsight_inference_seconds", f'task="{_escape(task)}"')
            lines += [
                "# HELP medsight_model_loads_total Times this worker loaded the model (1 when healthy).",
                "# TYPE medsight_model_loads_total counter",
                f"medsight_model_loads_total {self.model_loads}",
                "# HELP medsight_model_load_seconds Seconds the last model load took.",
                "# TYPE medsight_model_load_seconds gauge",
                f"medsight_model_load_seconds {'NaN' if self.model_load_seconds is None else self.model_load_seconds}",
            ]
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
