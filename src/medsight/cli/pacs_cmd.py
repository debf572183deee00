"""``medsight pacs query | run --study UID | watch`` over DICOMweb.

Credentials: ``--user`` with ``--password`` (or ``$MEDSIGHT_PACS_PASSWORD``), or a bearer token
in ``$MEDSIGHT_PACS_TOKEN``; never printed.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from medsight.cli.errors import reports_errors

app = typer.Typer(help="Query a PACS over DICOMweb, run a model on its studies, watch for new ones.",
                  no_args_is_help=True)

URL = typer.Option(..., "--url", envvar="MEDSIGHT_PACS_URL", help="The DICOMweb root, e.g. http://pacs:8042/dicom-web.")
USER = typer.Option(None, "--user", help="HTTP basic user (bearer token: set $MEDSIGHT_PACS_TOKEN instead).")
PASSWORD = typer.Option(None, "--password", envvar="MEDSIGHT_PACS_PASSWORD", help="HTTP basic password.",
                        show_default=False)
MODALITY = typer.Option(None, "--modality", help="Only series of this modality (CT, MR...).")
DESCRIPTION = typer.Option(None, "--series-description", help="Only series whose description matches this "
                           "case-insensitive glob, e.g. '*liver*'.")
ATTEMPTS = typer.Option(4, "--attempts", min=1, help="Tries per request when the PACS is down or answers 5xx.")


def _client(url: str, user: str | None, password: str | None, attempts: int):
    from medsight.pacs.client import PacsClient

    return PacsClient(url, user=user, password=password, attempts=attempts)


def _filter(modality: str | None, description: str | None):
    from medsight.pacs.client import SeriesFilter

    return SeriesFilter(modality=modality, description=description)


@app.command("query")
@reports_errors
def query(
    url: str = URL,
    study: str = typer.Option(None, "--study", help="List this study's series instead of the studies."),
    modality: str = MODALITY,
    series_description: str = DESCRIPTION,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    user: str = USER,
    password: str = PASSWORD,
    attempts: int = ATTEMPTS,
) -> None:
    """List studies (QIDO-RS), or one study's series with --study. UIDs, dates and descriptions only."""
    from dataclasses import asdict

    client = _client(url, user, password, attempts)
    if study:
        rows = [asdict(s) for s in client.series(study, where=_filter(modality, series_description))]
        columns = ("series_uid", "modality", "number", "n_instances", "description")
    else:
        rows = [asdict(s) for s in client.studies(modality=modality)]
        columns = ("study_uid", "date", "modalities", "n_series", "description")
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo("\t".join(columns))
    for row in rows:
        typer.echo("\t".join(",".join(v) if isinstance(v, (list, tuple)) else str(v if v is not None else "")
                             for v in (row[c] for c in columns)))
    typer.echo(f"{len(rows)} {'series' if study else 'study(ies)'}", err=True)


@app.command("run")
@reports_errors
def run(
    study: str = typer.Option(..., "--study", help="The StudyInstanceUID to process."),
    bundle: Path = typer.Option(..., "--bundle",
                                help="The model bundle folder (segmentation, classification or detection)."),
    url: str = URL,
    modality: str = MODALITY,
    series_description: str = DESCRIPTION,
    work_dir: Path = typer.Option(Path("pacs_work"), "--work-dir", help="Where series are downloaded and results "
                                  "written."),
    device: str = typer.Option("cpu", help="cpu, cuda..."),
    user: str = USER,
    password: str = PASSWORD,
    attempts: int = ATTEMPTS,
) -> None:
    """Retrieve the study's matching series (WADO-RS), run the bundle, store the SEG / SR back (STOW-RS)."""
    from medsight.pacs.run import run_study

    stored = run_study(_client(url, user, password, attempts), study, bundle, work_dir=work_dir,
                       where=_filter(modality, series_description), device=device)
    typer.echo(json.dumps(stored, indent=2))


@app.command("watch")
@reports_errors
def watch(
    bundle: Path = typer.Option(..., "--bundle", help="The model bundle folder."),
    url: str = URL,
    modality: str = MODALITY,
    series_description: str = DESCRIPTION,
    state: Path = typer.Option(Path("pacs_state.json"), "--state", help="The state file (processed / failed "
                               "studies); keep it to resume without repeating or missing a study."),
    interval: float = typer.Option(30.0, "--interval", min=0.0, help="Seconds between polls."),
    once: bool = typer.Option(False, "--once", help="Poll a single time, then exit."),
    max_attempts: int = typer.Option(3, "--max-attempts", min=1, help="Tries per study before it is marked failed."),
    work_dir: Path = typer.Option(None, "--work-dir", help="Where series are downloaded (default: next to --state)."),
    user: str = USER,
    password: str = PASSWORD,
    attempts: int = ATTEMPTS,
) -> None:
    """Poll for new studies matching the filter and process each exactly once (Ctrl-C to stop)."""
    import logging

    from medsight.pacs.watch import watch as watch_pacs

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        final = watch_pacs(_client(url, user, password, attempts), bundle, state_path=state,
                           filters=_filter(modality, series_description), interval=interval, once=once,
                           max_attempts=max_attempts, work_dir=work_dir)
    except KeyboardInterrupt:
        typer.echo("stopped; the state is saved", err=True)
        return
    typer.echo(f"{len(final.processed)} processed, {len(final.failed)} failed (state: {state})")
