"""``medsight serve BUNDLE [--host 127.0.0.1] [--port 8000] [--workers N] [--api-keys FILE] [--no-auth]``"""

from __future__ import annotations

from pathlib import Path

import typer

from medsight.cli.errors import reports_errors


@reports_errors
def serve(
    bundle: Path = typer.Argument(..., help="A model folder (RUN_DIR/model)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; 0.0.0.0 for every interface."),
    port: int = typer.Option(8000, help="TCP port."),
    workers: int = typer.Option(1, help="Worker processes; each loads the model once."),
    api_keys: Path | None = typer.Option(
        None, "--api-keys", help="File with one API key per line (also read: $MEDSIGHT_API_KEYS, comma-separated)."
    ),
    no_auth: bool = typer.Option(False, "--no-auth", help="No API key needed (loopback hosts only)."),
    max_body_mb: float = typer.Option(64.0, help="Largest upload accepted, in MB (larger: 413)."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
) -> None:
    """Serve a model over HTTP: REST API (/v1/predict, /v1/explain, /v1/model), metrics and a web page."""
    from medsight.serve.server import run_server

    run_server(bundle=bundle, host=host, port=port, workers=workers, api_keys_file=api_keys, no_auth=no_auth,
               max_body_mb=max_body_mb, device=device)
