"""A results CSV written row by row, that a crashed or stopped batch can resume.

Each row is flushed as soon as it is written, so a crash loses at most the row being
written. With ``resume=True`` the rows of files that succeeded are kept (a half-written last
row is dropped), their paths are reported in :attr:`ResultsCsv.done` so the caller skips them,
and new rows are appended. Rows with an ``error`` are dropped, so the files that failed
before are tried again: a file that was still being copied, or that a newer reader reads,
gets its row; one that is still broken gets a fresh error row.

Example:
    >>> with ResultsCsv(Path("preds.csv"), ["path", "label", "error"], resume=True) as results:
    ...     for path in files:
    ...         if str(path) not in results.done:
    ...             results.write({"path": str(path), "label": "nodule", "error": ""})
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from medsight.errors import ConfigError


class ResultsCsv:
    """Context manager around a streamed, resumable CSV of one row per input file."""

    def __init__(self, path: Path, fields: list[str], *, resume: bool = False) -> None:
        self.path, self.fields, self.resume = Path(path), fields, resume
        self.done: set[str] = set()

    def __enter__(self) -> ResultsCsv:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = self._kept_rows() if self.resume and self.path.is_file() else []
        self.done = {row["path"] for row in kept}
        staging = self.path.with_name(f".{self.path.name}.tmp")
        with staging.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(kept)
        os.replace(staging, self.path)
        self._handle = self.path.open("a", newline="")
        self._writer = csv.DictWriter(self._handle, fieldnames=self.fields)
        return self

    def write(self, row: dict[str, Any]) -> None:
        self._writer.writerow(row)
        self._handle.flush()

    def __exit__(self, *exc: object) -> None:
        self._handle.close()

    def _kept_rows(self) -> list[dict[str, str]]:
        """The complete rows of files that succeeded (no ``error``)."""
        with self.path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames != self.fields:
                raise ConfigError(
                    self.path,
                    f"has the columns {reader.fieldnames}, not {self.fields} (another model or other options wrote it)",
                    "resume with the model and options that started it, or choose a new --out",
                )
            return [row for row in reader if None not in row.values() and None not in row and not row.get("error")]


def prediction_fields(label_names: list[str], *, domain: bool) -> list[str]:
    """The columns of a classifier's ``predictions.csv``; ``out_of_domain`` and ``domain_reasons`` when its bundle
    has a domain record (``domain``), so an older bundle's CSV keeps its columns."""
    checked = ["out_of_domain", "domain_reasons"] if domain else []
    return ["path", "label", *(f"prob_{n}" for n in label_names), "threshold", *checked, "error"]


def csv_row(row: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    """A prediction row flattened into ``fields``: one ``prob_<class>`` column per class, the domain reasons
    joined by ``; ``, and ``out_of_domain`` empty where nothing was checked."""
    flat = {**row, **{f"prob_{n}": p for n, p in row["probabilities"].items()},
            "out_of_domain": "" if row.get("out_of_domain") is None else row["out_of_domain"],
            "domain_reasons": "; ".join(row.get("domain_reasons") or [])}
    return {name: flat.get(name, "") for name in fields}
