"""``medsight serve [BUNDLE | --registry DIR] [--feedback DIR] [--host H] [--port P] [--workers N] [--api-keys F]
[--max-voxels N] [--auth-failures-per-minute N]``"""

from __future__ import annotations

from pathlib import Path

import typer

from medsight.cli.errors import reports_errors


@reports_errors
def serve(
    bundle: Path = typer.Argument(None, help="A model folder (RUN_DIR/model); or serve a registry's production model."),
    registry: Path | None = typer.Option(
        None, "--registry", help="Serve the registry's production version and hot-swap on promote/rollback."
    ),
    feedback: Path | None = typer.Option(
        None, "--feedback", help="Folder for clinicians' feedback (POST /v1/feedback)."
    ),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; 0.0.0.0 for every interface."),
    port: int = typer.Option(8000, help="TCP port."),
    workers: int = typer.Option(1, help="Worker processes; each loads the model once."),
    api_keys: Path | None = typer.Option(
        None, "--api-keys", help="File with one API key per line (also read: $MEDSIGHT_API_KEYS, comma-separated)."
    ),
    no_auth: bool = typer.Option(False, "--no-auth", help="No API key needed (loopback hosts only)."),
    max_body_mb: float = typer.Option(64.0, help="Largest upload accepted, in MB (larger: 413)."),
    max_voxels: int | None = typer.Option(
        None, "--max-voxels", help="Most values (voxels x channels) an upload may declare, read from its header "
        "before decoding (more: 413). Default 2^26 = 67,108,864, stricter than the CLI's 2^30."
    ),
    auth_failures_per_minute: int | None = typer.Option(
        None, "--auth-failures-per-minute", help="Failed authentications one client address may make per minute "
        "before it is answered 429 with Retry-After (default 10); requests with a valid key are never limited."
    ),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    mixed_precision: bool = typer.Option(
        False, "--mixed-precision", help="Segmenters: run the network in bfloat16 where the CPU has native bf16 "
        "(about 2x faster; masks agree on >99% of pixels), autocast on CUDA."
    ),
    max_queue: int = typer.Option(
        16, "--max-queue", help="Requests each worker holds for its model at most, running and waiting; more are "
        "answered 503 with Retry-After at once instead of queueing without bound."
    ),
    profile: str | None = typer.Option(
        None, "--profile", help="Segmenters: fast or accurate, the inference profiles measured when the bundle was "
        "trained (default: the bundle's own, fast)."
    ),
    out_of_domain: str | None = typer.Option(
        None, "--out-of-domain", help="Classifiers: flag (answer, marked out_of_domain with the reasons), refuse "
        "(422 with the reasons) or off, for inputs outside the training domain; default: the bundle's own."
    ),
) -> None:
    """Serve a model over HTTP: REST API (/v1/predict, /v1/explain, /v1/model), metrics and a web page."""
    from medsight.serve.server import run_server

    run_server(bundle=bundle, registry=registry, feedback=feedback, host=host, port=port, workers=workers,
               api_keys_file=api_keys, no_auth=no_auth, max_body_mb=max_body_mb, max_voxels=max_voxels,
               auth_failures_per_minute=auth_failures_per_minute, device=device, mixed_precision=mixed_precision,
               out_of_domain=out_of_domain, profile=profile, max_queue=max_queue)
