"""``medsight plan DATA [--out DIR] [--memory-mb N] [--set key=value]``"""

from __future__ import annotations

from pathlib import Path

import typer

from medsight.cli.errors import parse_overrides, reports_errors


@reports_errors
def plan(
    data: Path = typer.Argument(..., help="Image/mask folders, DRIVE, an MSD dataset.json folder or DICOM + SEG."),
    out: Path = typer.Option(Path("plan"), help="Folder for fingerprint.json and plan.json."),
    memory_mb: float = typer.Option(2000, help="Memory budget of one training step (MB)."),
    spatial_dims: int = typer.Option(None, help="Force a 2D plan of 3D data (2)."),
    set_: list[str] = typer.Option(None, "--set", help="Override a plan field: --set batch_size=4"),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Fingerprint a segmentation data set and derive spacing, normalisation, patch and batch size."""
    from medsight.workflows.plan import plan_dataset

    result = plan_dataset(
        data=data, out=out, memory_budget_mb=memory_mb, spatial_dims=spatial_dims,
        overrides=parse_overrides(set_) or None, progress=progress,
    )
    for note in result.notes:
        typer.echo(f"- {note}")
    typer.echo(f"wrote {out / 'plan.json'} and {out / 'fingerprint.json'}")
