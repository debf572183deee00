"""What a service worker is built from: :class:`ServeSettings`, and its round trip through the environment.

``medsight serve`` validates the settings once (:func:`medsight.serve.server.run_server`), then hands them
to each Uvicorn worker as JSON in ``$MEDSIGHT_SERVE_SETTINGS`` (:func:`settings_to_env`); a worker reads
them back with :func:`settings_from_env`. The JSON carries no key material, only the key file's path.

Example:
    >>> os.environ[SETTINGS_ENV] = settings_to_env(ServeSettings(bundle=Path("model"), no_auth=True), None)
    >>> settings_from_env().bundle
    PosixPath('model')
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from medsight.io.limits import SERVICE_MAX_VOXELS
from medsight.serve.auth import DEFAULT_AUTH_FAILURES_PER_MINUTE, load_api_keys

SETTINGS_ENV = "MEDSIGHT_SERVE_SETTINGS"
DEFAULT_MAX_BODY_MB = 64.0
_PATHS = ("bundle", "registry", "feedback")


@dataclass(frozen=True)
class ServeSettings:
    """Everything a worker needs to build the app (keys are read from the file or environment)."""

    bundle: Path | None = None
    api_keys: tuple[str, ...] = ()
    no_auth: bool = False
    host: str = "127.0.0.1"
    max_body_bytes: int = int(DEFAULT_MAX_BODY_MB * 2**20)
    device: str = "cpu"
    mixed_precision: bool = False
    #: a segmenter's inference profile (fast, accurate); None: the bundle's default
    profile: str | None = None
    #: requests a worker holds for its model at most (running and waiting); more are answered 503
    max_queue: int = 16
    registry: Path | None = None
    feedback: Path | None = None
    registry_poll_s: float = 1.0
    max_voxels: int = SERVICE_MAX_VOXELS
    auth_failures_per_minute: int = DEFAULT_AUTH_FAILURES_PER_MINUTE
    #: flag, refuse or off for inputs outside a classifier's training domain; None: the bundle's own action
    out_of_domain: str | None = None


def settings_from_env(env: dict[str, str] | None = None) -> ServeSettings:
    """The settings :func:`~medsight.serve.server.run_server` handed to its workers through
    ``$MEDSIGHT_SERVE_SETTINGS``."""
    env = dict(os.environ if env is None else env)
    raw = json.loads(env[SETTINGS_ENV])
    keys = load_api_keys(raw.pop("api_keys_file"), env=env)
    paths = {k: Path(raw.pop(k)) if raw.get(k) else raw.pop(k, None) for k in _PATHS}
    return ServeSettings(**paths, api_keys=tuple(keys), **raw)


def settings_to_env(settings: ServeSettings, api_keys_file: Path | None) -> str:
    """The JSON for ``$MEDSIGHT_SERVE_SETTINGS``: no key material, only the key file's path."""
    raw = asdict(settings)
    raw.pop("api_keys")
    paths = {k: str(getattr(settings, k)) if getattr(settings, k) else None for k in _PATHS}
    return json.dumps({**raw, **paths, "api_keys_file": str(api_keys_file) if api_keys_file else None})
