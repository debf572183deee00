"""API keys: where they come from, when the service may run without them, how they are checked.

Keys are read from a file (one per line, ``#`` comments and blank lines ignored) or from the
environment variable ``MEDSIGHT_API_KEYS`` (comma-separated); both when both are given.
A request carries its key in ``X-API-Key`` or ``Authorization: Bearer <key>``; the key is
compared with every configured key by :func:`hmac.compare_digest`, so the time taken does
not tell which characters were right. Keys are printable ASCII (an HTTP header cannot carry
anything else reliably), and :class:`FailedAuthLimit` bounds how often one client address may
fail to authenticate: past the limit it is answered 429 with ``Retry-After``, while a request
with a valid key is never limited.

Example:
    >>> keys = load_api_keys(None, env={"MEDSIGHT_API_KEYS": "k1,k2"})
    >>> key_is_valid("k2", keys)
    True
"""

from __future__ import annotations

import hmac
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from medsight.errors import ConfigError

ENV_KEYS = "MEDSIGHT_API_KEYS"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
#: Failed authentications one client address may make per minute before it is answered 429.
DEFAULT_AUTH_FAILURES_PER_MINUTE = 10
#: Client addresses the limiter tracks before it forgets the ones with no recent failure.
_MAX_TRACKED_CLIENTS = 10_000


def load_api_keys(path: str | Path | None, *, env: Mapping[str, str] | None = None) -> list[str]:
    """The configured keys from ``path`` and ``$MEDSIGHT_API_KEYS``.

    Raises:
        ConfigError: the key file is missing or unreadable.
    """
    env = os.environ if env is None else env
    keys = [k.strip() for k in env.get(ENV_KEYS, "").split(",") if k.strip()]
    if path is not None:
        path = Path(path)
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(path, f"cannot read the API key file ({type(exc).__name__})",
                              "pass a readable text file with one key per line") from exc
        keys += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return list(dict.fromkeys(keys))


def check_auth_settings(*, keys: Sequence[str], no_auth: bool, host: str) -> None:
    """Refuse to start an unprotected or misconfigured service.

    Raises:
        ConfigError: no key and no ``--no-auth``; ``--no-auth`` on a non-loopback host.
    """
    if no_auth:
        if host not in LOOPBACK_HOSTS:
            raise ConfigError(
                f"--host {host}",
                "--no-auth is only allowed on a loopback host, where nobody else can reach the service",
                "use --host 127.0.0.1, or drop --no-auth and give keys with --api-keys FILE or $MEDSIGHT_API_KEYS",
            )
        return
    if not keys:
        raise ConfigError(
            "medsight serve",
            "no API key is configured, so every request would be refused",
            f"pass --api-keys FILE (one key per line) or set {ENV_KEYS}=key1,key2; "
            "for a local try-out on 127.0.0.1 use --no-auth",
        )
    unusable = [k for k in keys if not (k.isascii() and k.isprintable())]
    if unusable:
        raise ConfigError(
            "API keys",
            f"{len(unusable)} key(s) hold characters outside printable ASCII, which no HTTP header can carry "
            "reliably, so they could never match",
            'use long random ASCII keys, e.g. python -c "import secrets; print(secrets.token_urlsafe(32))"',
        )
    short = [k for k in keys if len(k) < 16]
    if short:
        raise ConfigError(
            "API keys",
            f"{len(short)} key(s) are shorter than 16 characters and could be guessed",
            'use long random keys, e.g. python -c "import secrets; print(secrets.token_urlsafe(32))"',
        )


def key_from_headers(headers: Mapping[str, str]) -> str | None:
    """The key a request carries in ``X-API-Key`` or ``Authorization: Bearer``; None when absent."""
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def key_is_valid(given: str | None, keys: Sequence[str]) -> bool:
    """Constant-time comparison against every configured key (no early exit)."""
    if not given:
        return False
    candidate = given.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(candidate, key.encode())
    return matched


class FailedAuthLimit:
    """At most ``per_minute`` failed authentications per client address in any 60 s; thread-safe.

    Example:
        >>> limit = FailedAuthLimit(per_minute=10)
        >>> limit.failed("10.0.0.7")  # None: answer 401; a number: answer 429, retry after that many seconds
    """

    def __init__(self, per_minute: int = DEFAULT_AUTH_FAILURES_PER_MINUTE, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute < 1:
            raise ConfigError(f"--auth-failures-per-minute {per_minute}", "must be at least 1",
                              f"use e.g. {DEFAULT_AUTH_FAILURES_PER_MINUTE}")
        self.per_minute, self.clock, self.window_s = per_minute, clock, 60.0
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def failed(self, client: str) -> int | None:
        """Record one failed authentication from ``client``; None while under the limit, else the seconds
        until it may try again (that refused attempt is not counted, so the rate stays bounded)."""
        now = self.clock()
        with self._lock:
            recent = self._failures.setdefault(client, deque(maxlen=self.per_minute))
            while recent and recent[0] <= now - self.window_s:
                recent.popleft()
            if len(recent) >= self.per_minute:
                return max(1, math.ceil(recent[0] + self.window_s - now))
            recent.append(now)
            if len(self._failures) > _MAX_TRACKED_CLIENTS:
                self._forget_quiet(now)
            return None

    def _forget_quiet(self, now: float) -> None:
        quiet = [c for c, times in self._failures.items() if not times or times[-1] <= now - self.window_s]
        for client in quiet:
            del self._failures[client]
