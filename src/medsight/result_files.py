"""A run's result files: CSV tables and strict JSON, each written whole or not at all.

Evaluation (``per_case.csv``, ``metrics.json``, ``cv_metrics.json``) and robustness
(``robustness.csv``, ``robustness.json``) write through these two functions, so every table has the
same dialect and every JSON file the same rules for undefined values. The plans (``plan.json``) are typed
records: :func:`write_record_json` and :func:`read_record_json` keep and read them back.

Example:
    >>> write_csv_table(out / "per_case.csv", [{"case_id": "a", "dice": 0.9}], ["case_id", "dice"])
    >>> write_strict_json(out / "metrics.json", {"auc": float("nan")})     # {"auc": null}
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from medsight.atomic_write import atomic_write_text, replacing
from medsight.errors import ConfigError


def write_csv_table(path: Path, rows: Iterable[Mapping[str, object]], fields: Sequence[str]) -> None:
    """A header of ``fields`` and one line per row (a row's missing fields are empty), UTF-8, CSV's own
    ``\\r\\n`` line ends; values as ``str`` gives them (format a float first to round it).

    Raises:
        OutputWriteError: the disk is full, or the folder is not writable; an older file stays as it was.
    """
    with replacing(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)


def write_strict_json(path: Path, data: object) -> None:
    """Strict JSON, indented by 2 (NaN and infinities become null; NumPy scalars become numbers; anything
    else JSON has no type for becomes its ``str``), whole or not at all.

    Raises:
        OutputWriteError: the disk is full, or the folder is not writable; an older file stays as it was.
    """
    atomic_write_text(path, json.dumps(_strict(data), indent=2, allow_nan=False, default=str))


def write_record_json(path: Path, record) -> None:
    """Write a pydantic ``record`` as indented JSON, whole or not at all."""
    atomic_write_text(Path(path), json.dumps(record.model_dump(mode="json"), indent=2) + "\n")


def read_record_json(path: Path, record_type, *, what: str, fix: str):
    """The ``record_type`` (a pydantic model) in the JSON file ``path``.

    Raises:
        ConfigError: the file is missing, not JSON or not ``what`` (``fix`` says what to do).
    """
    path = Path(path)
    try:
        return record_type.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as err:  # pydantic's ValidationError is a ValueError
        raise ConfigError(path, f"is not {what} ({' '.join(str(err).split())[:300]})", fix) from err


def _strict(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
