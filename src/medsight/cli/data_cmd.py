"""``medsight data inspect PATH [--out report.json]``"""

from __future__ import annotations

from pathlib import Path

import typer

from medsight.cli.errors import reports_errors

app = typer.Typer(help="Know your data before training on it.", no_args_is_help=True)


@app.command("inspect")
@reports_errors
def inspect(
    path: Path = typer.Argument(..., help="A class folder, CSV manifest, .npz, DICOM folder or detection set."),
    out: Path = typer.Option(None, help="Where to write the JSON report (default PATH-inspection.json)."),
    task: str = typer.Option(None, help="'detection' for boxes (COCO, VOC, YOLO, box CSV, masks); default: "
                             "recognised from PATH."),
) -> None:
    """Counts, sizes, unreadable files, duplicates and leakage, outliers and leftover PHI; for detection
    sets boxes per image, box sizes per class, dropped boxes and missing annotations."""
    from rich.console import Console

    from medsight.data.inspect import inspect_dataset, render_inspection

    target = out or Path(f"{path.name or 'data'}-inspection.json")
    report = inspect_dataset(path, out=target, task=task)
    render_inspection(report, Console())
    typer.echo(f"wrote {target}")
