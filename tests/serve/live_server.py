"""``medsight serve`` in a subprocess on a free loopback port, for the tests that need a real server.

Example:
    >>> with live_service(bundle, keys_file, "--workers", "2") as service:
    ...     httpx2.get(f"{service.base}/healthz")
    >>> service.output  # everything it printed, once it has stopped
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2

#: ``python -c`` source that runs the serve command as a one-command Typer app.
RUN_CLI = "import typer; from medsight.cli.serve_cmd import serve; app = typer.Typer(); app.command()(serve); app()"
READY_WITHIN_S = 90


@dataclass
class LiveService:
    base: str
    output: str = ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def live_service(bundle: Path, keys: Path, *args: str) -> Iterator[LiveService]:
    """Serve ``bundle`` with the keys in ``keys`` (and ``args``) until the block ends; ready when it starts."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MEDSIGHT_API_KEYS"}
    server = subprocess.Popen([sys.executable, "-c", RUN_CLI, str(bundle), "--port", str(port), "--api-keys",
                               str(keys), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)
    service = LiveService(f"http://127.0.0.1:{port}")
    try:
        _wait_until_ready(server, service.base)
        yield service
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        service.output = server.communicate(timeout=30)[0]


def _wait_until_ready(server: subprocess.Popen, base: str) -> None:
    deadline = time.monotonic() + READY_WITHIN_S
    while True:
        try:
            if httpx2.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx2.TransportError:
            pass
        assert server.poll() is None, server.stdout.read()
        assert time.monotonic() < deadline, f"the server did not become ready in {READY_WITHIN_S} s"
        time.sleep(0.3)
