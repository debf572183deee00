"""``medsight demo``: synthetic chest phantoms -> trained, evaluated classifier -> report."""

from __future__ import annotations

from pathlib import Path

import typer

from medsight.cli.errors import reports_errors


@reports_errors
def demo(
    out: Path = typer.Option(Path("medsight-demo"), help="Folder for the data, the run and the report."),
    n_per_class: int = typer.Option(300, help="Phantoms per class."),
    epochs: int = typer.Option(None, help="Override the demo recipe's epochs."),
    seed: int = typer.Option(0, help="Seed for the phantoms, the split and training."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Generate phantoms with and without a nodule, train, evaluate, and say where it all is."""
    from medsight.workflows.demo import run_demo

    typer.echo(run_demo(out=out, n_per_class=n_per_class, epochs=epochs, seed=seed, progress=progress))
