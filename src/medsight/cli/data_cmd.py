"""``medsight data inspect PATH [--out report.json]``"""

from __future__ import annotations

from pathlib import Path

import typer

from medsight.cli.errors import reports_errors

app = typer.Typer(help="Know your data before training on it.", no_args_is_help=True)


@app.command("inspect")
@reports_errors
def inspect(
    path: Path = typer.Argument(..., help="A class folder, CSV manifest, .npz or DICOM folder."),
    out: Path = typer.Option(None, help="Where to write the JSON report (default PATH-inspection.json)."),
) -> None:
    """Counts, sizes, unreadable files, duplicates and leakage, outliers and leftover PHI."""
    from rich.console import Console

    from medsight.data.inspect import inspect_dataset, render_inspection

    target = out or Path(f"{path.name or 'data'}-inspection.json")
    report = inspect_dataset(path, out=target)
    render_inspection(report, Console())
    typer.echo(f"wrote {target}")
