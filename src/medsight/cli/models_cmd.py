"""``medsight models list``."""

from __future__ import annotations

import typer

app = typer.Typer(help="Network architectures you can train (model.name).", no_args_is_help=True)


@app.command("list")
def list_cmd(task: str = typer.Option(None, help="classification or segmentation")) -> None:
    """List the registered networks."""
    from medsight.models import list_models

    for name in list_models(task):
        typer.echo(name)
