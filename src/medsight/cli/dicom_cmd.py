"""``medsight dicom anonymize IN OUT [--mapping FILE] [--key-file FILE]``"""

from __future__ import annotations

from pathlib import Path

import typer

from medsight.cli.errors import reports_errors

app = typer.Typer(help="DICOM utilities.", no_args_is_help=True)


@app.command("anonymize")
@reports_errors
def anonymize(
    src: Path = typer.Argument(..., help="A DICOM file or a folder of them (searched recursively)."),
    dst: Path = typer.Argument(..., help="Where the de-identified copies go (same relative paths)."),
    mapping: Path = typer.Option(None, help="Also write the old -> new UID / patient-ID map here (it re-identifies: "
                                 "keep it apart). Not written unless asked."),
    key_file: Path = typer.Option(None, help="A secret key file: the same key gives the same new UIDs across runs "
                                  "(default: a fresh random key per run)."),
) -> None:
    """De-identify DICOM files (PS3.15 basic profile subset) with consistent UID remapping."""
    from medsight.errors import ConfigError
    from medsight.io.anonymize import anonymize_tree

    key = None
    if key_file is not None:
        if not key_file.is_file():
            raise ConfigError(key_file, "key file not found", "create one, e.g. head -c 32 /dev/urandom > key.bin")
        key = key_file.read_bytes()
    counts = anonymize_tree(src, dst, key=key, mapping=mapping)
    typer.echo(f"de-identified {counts['files']} file(s) into {dst} ({counts['skipped']} non-DICOM file(s) skipped; "
               f"{counts['uids']} UIDs and {counts['patients']} patient ID(s) remapped)"
               + (f"; map written to {mapping}" if mapping else ""))
