"""The seconds one training step takes on this machine, as the plans measure it.

Both tasks' plans (classification and detection) time a few training steps of a candidate network on random
inputs and divide by the batch: :func:`median_step_seconds` runs the step once to warm up (allocations, kernel
choice), then ``steps`` more, each synchronised on CUDA, and returns the median (so one step slowed by another
process does not decide).

Example:
    >>> median_step_seconds(lambda: None, steps=2, device=torch.device("cpu")) >= 0.0
    True
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def median_step_seconds(step: Callable[[], None], *, steps: int, device: torch.device) -> float:
    """The median wall time of ``steps`` calls of ``step`` after one warm-up call."""
    times = []
    for index in range(steps + 1):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if index:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


__all__ = ["median_step_seconds"]
