"""API keys: where they come from, when the service may run without them, how they are checked.

Keys are read from a file (one per line, ``#`` comments and blank lines ignored) or from the
environment variable ``MEDSIGHT_API_KEYS`` (comma-separated); both when both are given.
A request carries its key in ``X-API-Key`` or ``Authorization: Bearer <key>``; the key is
compared with every configured key by :func:`hmac.compare_digest`, so the time taken does
not tell which characters were right.

Example:
    >>> keys = load_api_keys(None, env={"MEDSIGHT_API_KEYS": "k1,k2"})
    >>> key_is_valid("k2", keys)
    True
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from medsight.errors import ConfigError

ENV_KEYS = "MEDSIGHT_API_KEYS"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


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
