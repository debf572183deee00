"""The served model's life: loaded once when the app starts, run on one inference thread, and
swapped for the registry's production bundle when the registry changes (or on ``/v1/admin/reload``).

A swap loads the new bundle off the request path and replaces ``app.state.service`` in one
reference assignment, so requests in flight finish on the model they started with.

Example:
    >>> slot = ModelSlot(settings, Metrics())
    >>> app = FastAPI(lifespan=slot.lifespan)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from medsight.errors import MedsightError
from medsight.serve.metrics import Metrics
from medsight.serve.model import ModelService

if TYPE_CHECKING:
    from medsight.serve.settings import ServeSettings

log = logging.getLogger("medsight.serve")


class ModelSlot:
    """Loads the model into ``app.state.service``, keeps it current with a registry, and owns the
    worker's inference thread.

    Args:
        settings: the bundle or registry to serve, the device, precision and registry poll interval.
        metrics: records each load's time.
    """

    def __init__(self, settings: ServeSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics

    def path(self) -> Path:
        """The bundle to serve: the one given, or the registry's production bundle."""
        if self.settings.registry is None:
            return Path(self.settings.bundle)
        from medsight.registry import ModelRegistry

        return ModelRegistry(self.settings.registry).production_bundle()

    def load(self, path: Path) -> ModelService:
        """The bundle at ``path`` loaded with the service's device and precision."""
        return ModelService(path, device=self.settings.device, mixed_precision=self.settings.mixed_precision,
                            out_of_domain=self.settings.out_of_domain, profile=self.settings.profile)

    async def reload(self, app: FastAPI) -> bool:
        """Load the registry's production bundle off the request path and swap it in; True when it changed."""
        async with app.state.swap_lock:
            path = await run_in_threadpool(self.path)
            current = app.state.service
            if current is not None and current.path == path:
                return False
            start = perf_counter()
            service = await run_in_threadpool(self.load, path)
            app.state.service = service  # one reference assignment: requests in flight keep the old one
            self.metrics.model_loaded(perf_counter() - start)
            log.info("model swapped in: %s %s", service.version["name"], service.version["hash"])
            return True

    async def watch(self, app: FastAPI) -> None:
        """Reload whenever the registry's index changes, every ``registry_poll_s`` seconds."""
        index = Path(self.settings.registry) / "registry.json"
        seen = index.stat().st_mtime_ns if index.exists() else None
        while True:
            await asyncio.sleep(self.settings.registry_poll_s)
            stamp = index.stat().st_mtime_ns if index.exists() else None
            if stamp != seen:
                seen = stamp
                try:
                    await self.reload(app)
                except MedsightError as exc:  # e.g. nothing in production any more: keep serving the old model
                    log.warning("registry change not applied: %s", type(exc).__name__)

    @asynccontextmanager
    async def lifespan(self, app: FastAPI):
        """FastAPI's lifespan: load the model (and watch the registry) at start, let go of both at the end."""
        # One inference thread per worker: torch's OpenMP team lives on the thread that calls it, and
        # hopping between pool threads leaves idle teams spinning (10-100x slower on a small CPU).
        app.state.swap_lock = asyncio.Lock()
        app.state.inference = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medsight-inference")
        app.state.queue = InferenceQueue(self.settings.max_queue)
        start = perf_counter()
        app.state.service = await on_model(app, partial(self.load, self.path()))
        self.metrics.model_loaded(perf_counter() - start)
        version = app.state.service.version
        log.info("model loaded: %s %s (%s) in %.2f s", app.state.service.task, version["name"], version["hash"],
                 perf_counter() - start)
        watcher = asyncio.create_task(self.watch(app)) if self.settings.registry is not None else None
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
            app.state.service = None
            app.state.inference.shutdown(wait=False)


class InferenceQueue:
    """How many requests wait for (or run on) the worker's inference thread, at most ``limit``.

    Counted on the event loop's thread only, so a plain integer is safe.
    """

    def __init__(self, limit: int) -> None:
        self.limit, self.held = limit, 0

    def enter(self) -> None:
        """Hold a place, or refuse the request.

        Raises:
            BusyError: ``limit`` requests are already held (503 with ``Retry-After``).
        """
        from medsight.serve.errors import BusyError

        if self.held >= self.limit:
            raise BusyError("the inference queue", f"holds {self.held} requests, its limit",
                            "retry after a second, or run more workers (medsight serve --workers N)")
        self.held += 1

    def leave(self) -> None:
        self.held -= 1


async def on_model(app: FastAPI, work: Callable[[], Any]) -> Any:
    """Run ``work`` on the worker's single inference thread, behind the bounded queue.

    Raises:
        BusyError: the queue is full (the request is answered 503 at once, nothing is run).
    """
    queue = getattr(app.state, "queue", None)
    if queue is not None:
        queue.enter()
    try:
        return await asyncio.get_running_loop().run_in_executor(app.state.inference, work)
    finally:
        if queue is not None:
            queue.leave()
