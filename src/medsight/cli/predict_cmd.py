"""``medsight predict BUNDLE INPUT... [--out preds.csv|preds.json]``"""

from __future__ import annotations

from pathlib import Path

import typer

from medsight.cli.errors import reports_errors


@reports_errors
def predict(
    bundle: Path = typer.Argument(..., help="A model folder (RUN_DIR/model)."),
    inputs: list[Path] = typer.Argument(..., help="Image files or folders (searched recursively)."),
    out: Path = typer.Option(Path("predictions.csv"), help="A .csv or .json file."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Predict class probabilities for images; unreadable files get an error row."""
    from medsight.inference.predictor import predict_to_file

    counts = predict_to_file(bundle=bundle, inputs=inputs, out=out, progress=progress)
    typer.echo(f"wrote {out}: {counts['ok']} predicted, {counts['errors']} unreadable")
