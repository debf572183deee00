"""``medsight retrain --registry DIR --feedback DB --data ORIGINAL --out RUN``"""

from __future__ import annotations

from pathlib import Path

import typer

from medsight.cli.errors import reports_errors


@reports_errors
def retrain(
    registry: Path = typer.Option(..., "--registry", help="The model registry; its production model is fine-tuned."),
    feedback: Path = typer.Option(..., "--feedback", help="The feedback folder the service collected."),
    data: Path = typer.Option(..., "--data", help="The original training data (its val split is the frozen gate set)."),
    out: Path = typer.Option(..., "--out", help="The run folder for the fine-tuning."),
    epochs: int = typer.Option(3, min=1, help="Fine-tuning epochs."),
    lr: float = typer.Option(1e-4, min=0.0, help="Learning rate (lower than a fresh training's)."),
    margin: float = typer.Option(0.0, min=0.0, help="Largest metric drop the gate tolerates."),
    bootstrap: int = typer.Option(1000, min=10, help="Paired bootstrap resamples for the gate's CI."),
) -> None:
    """Fine-tune production on feedback + original data; promote only if the gate finds it no worse (else exit 1)."""
    from medsight.workflows.retrain import retrain as run_retrain

    result = run_retrain(registry=registry, feedback=feedback, data=data, out=out, epochs=epochs, lr=lr,
                         margin=margin, n_boot=bootstrap)
    typer.echo(result["table"])
    if result["promoted"]:
        typer.echo(f"version {result['version']} promoted to production (parent {result['parent']})")
    else:
        typer.echo(f"version {result['version']} kept as a candidate; production stays version {result['parent']}")
        raise typer.Exit(code=1)
