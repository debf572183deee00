"""Start the service under Uvicorn: validate everything first, then hand over to the workers.

Example:
    >>> run_server(bundle=Path("runs/demo/model"), api_keys_file=Path("keys.txt"), port=8000)
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

from medsight.errors import ConfigError
from medsight.serve.settings import DEFAULT_MAX_BODY_MB, ServeSettings

APP_FACTORY = "medsight.serve.app:app_from_env"


def run_server(
    *,
    bundle: Path | None = None,
    registry: Path | None = None,
    feedback: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    api_keys_file: Path | None = None,
    no_auth: bool = False,
    max_body_mb: float = DEFAULT_MAX_BODY_MB,
    max_voxels: int | None = None,
    auth_failures_per_minute: int | None = None,
    device: str = "cpu",
    mixed_precision: bool = False,
    out_of_domain: str | None = None,
    profile: str | None = None,
    max_queue: int = 16,
    log_level: str = "info",
) -> None:
    """Serve ``bundle`` (or ``registry``'s production version) until interrupted.

    Each of ``workers`` processes loads the model once; with ``registry`` each worker watches
    ``registry.json`` and hot-swaps on promote or rollback. ``feedback`` turns on ``POST /v1/feedback``.
    ``mixed_precision`` runs a segmenter's network in bfloat16 where the CPU has native bf16.
    ``max_voxels`` (default :data:`~medsight.io.limits.SERVICE_MAX_VOXELS`) is the most values an upload may
    declare; ``auth_failures_per_minute`` (default 10) the failed authentications one client address may make
    in a minute before it is answered 429. ``out_of_domain`` (flag, refuse, off) overrides a classifier bundle's
    action for inputs outside its training domain (refuse: 422 with the reasons). ``profile`` (fast, accurate)
    is a segmenter's inference profile (default: the bundle's). ``max_queue`` is the most requests a worker
    holds for its model (running and waiting); more are answered 503 with ``Retry-After``.

    Raises:
        ConfigError: no API key (and no ``no_auth``), ``no_auth`` off loopback, a key that is not printable
            ASCII, bad numbers, neither or both of ``bundle`` and ``registry``, ``mixed_precision`` for a
            classifier bundle, a ``profile`` for another task or one the bundle does not have.
        BundleError: ``bundle`` is not a readable model folder.
    """
    import uvicorn

    from medsight.serve.settings import SETTINGS_ENV, settings_to_env

    if workers < 1:
        raise ConfigError(f"--workers {workers}", "needs at least one worker", "use --workers 1 or more")
    settings = _checked_settings(
        bundle=bundle, registry=registry, feedback=feedback, host=host, api_keys_file=api_keys_file, no_auth=no_auth,
        max_body_mb=max_body_mb, max_voxels=max_voxels, auth_failures_per_minute=auth_failures_per_minute,
        device=device, mixed_precision=mixed_precision, out_of_domain=out_of_domain, profile=profile,
        max_queue=max_queue,
    )
    os.environ[SETTINGS_ENV] = settings_to_env(settings, Path(api_keys_file).resolve() if api_keys_file else None)
    # Idle OpenMP threads sleep instead of spinning for a few hundred ms after each request, which on a
    # small or shared CPU starved the event loop (p50 7 ms instead of 400 ms on 2 busy cores). It takes
    # effect because torch is first imported after this line (in the workers, or below for one worker).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    uvicorn.run(APP_FACTORY, factory=True, host=host, port=port, workers=workers, log_level=log_level,
                log_config=_log_config(log_level), server_header=False, proxy_headers=False)


def _checked_settings(
    *, bundle: Path | None, registry: Path | None, feedback: Path | None, host: str, api_keys_file: Path | None,
    no_auth: bool, max_body_mb: float, max_voxels: int | None, auth_failures_per_minute: int | None, device: str,
    mixed_precision: bool, out_of_domain: str | None = None, profile: str | None = None, max_queue: int = 16,
) -> ServeSettings:
    """The workers' settings, every option checked once here (an error now, not one in every worker).

    Raises:
        ConfigError, BundleError: as :func:`run_server` says.
    """
    from medsight.bundle import load_bundle
    from medsight.inference.segmenter import check_profile
    from medsight.io.limits import SERVICE_MAX_VOXELS, resolve_max_voxels
    from medsight.serve.auth import (
        DEFAULT_AUTH_FAILURES_PER_MINUTE,
        FailedAuthLimit,
        check_auth_settings,
        load_api_keys,
    )

    if out_of_domain not in (None, "flag", "refuse", "off"):
        raise ConfigError(f"--out-of-domain {out_of_domain}", "is not an action", "use flag, refuse or off")
    if max_queue < 1:
        raise ConfigError(f"--max-queue {max_queue}", "must be at least 1", "use e.g. --max-queue 16")
    if max_body_mb <= 0:
        raise ConfigError(f"--max-body-mb {max_body_mb}", "must be positive", "use e.g. --max-body-mb 64")
    max_voxels = resolve_max_voxels(SERVICE_MAX_VOXELS if max_voxels is None else max_voxels)
    if auth_failures_per_minute is None:
        auth_failures_per_minute = DEFAULT_AUTH_FAILURES_PER_MINUTE
    FailedAuthLimit(auth_failures_per_minute)  # a bad number is refused now, not in every worker
    keys = load_api_keys(api_keys_file)
    check_auth_settings(keys=keys, no_auth=no_auth, host=host)
    if (bundle is None) == (registry is None):
        raise ConfigError("medsight serve", "needs exactly one model source",
                          "give a model folder, or --registry DIR (serves its production version)")
    if registry is not None:
        from medsight.registry.registry import ModelRegistry

        served = ModelRegistry(registry).production_bundle()
    else:
        served = bundle
    header = load_bundle(served, weights=False)  # a clear error now rather than in every worker
    task = header.task
    if profile is not None:
        check_profile(header, profile)
    if mixed_precision and task != "segmentation":
        raise ConfigError("--mixed-precision", f"is for segmentation models ({served} is a {task} model)",
                          "drop it: classifiers are served in float32 (or ONNX)")
    return ServeSettings(bundle=Path(bundle).resolve() if bundle else None,
                         registry=Path(registry).resolve() if registry else None,
                         feedback=Path(feedback).resolve() if feedback else None,
                         api_keys=tuple(keys), no_auth=no_auth, host=host,
                         max_body_bytes=int(max_body_mb * 2**20), device=device,
                         mixed_precision=mixed_precision, max_voxels=max_voxels,
                         auth_failures_per_minute=auth_failures_per_minute, out_of_domain=out_of_domain,
                         profile=profile, max_queue=max_queue)


def _log_config(level: str) -> dict:
    """Uvicorn's logging set-up plus the ``medsight`` logger (sizes, types and timings only); the access log
    without query strings (a key or identifier sent as ``?api_key=...`` must not reach a log file)."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["medsight"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    config.setdefault("filters", {})["redact_query"] = {"()": "medsight.serve.observe.RedactQuery"}
    config["handlers"]["access"]["filters"] = ["redact_query"]
    return config
