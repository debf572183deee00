"""``medsight feedback export --db DIR --out DATA`` and ``medsight feedback list --db DIR``"""

from __future__ import annotations

from pathlib import Path

import typer

from medsight.cli.errors import reports_errors

app = typer.Typer(help="Clinician feedback collected by the service (POST /v1/feedback).", no_args_is_help=True)

_DB = typer.Option(..., "--db", help="The feedback folder the service was started with (--feedback DIR).")


@app.command("export")
@reports_errors
def export(
    db: Path = _DB,
    out: Path = typer.Option(..., "--out", help="Where to write the data set (class folders or images/ + masks/)."),
) -> None:
    """Write the feedback as a data set the trainers read (the newest verdict per input wins)."""
    from medsight.feedback import export_dataset

    manifest = export_dataset(db, out)
    typer.echo(f"{manifest['n_cases']} {manifest['task']} cases written to {out} (manifest: {out / 'manifest.json'})")


@app.command("list")
@reports_errors
def list_rows(db: Path = _DB) -> None:
    """One line per verdict: id, time, user, input hash, model version, verdict."""
    from medsight.feedback import FeedbackStore

    rows = FeedbackStore(db).rows()
    for row in rows:
        verdict = row["label"] if row["kind"] == "label" else row["kind"]
        typer.echo(f"{row['id']:>5}  {row['created_utc']}  {row['user_id']}  {row['input_sha256'][:12]}  "
                   f"{row['model_version']}  {verdict}")
    typer.echo(f"{len(rows)} verdict(s)")
