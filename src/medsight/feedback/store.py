"""The feedback store: one SQLite database (WAL mode) and a managed folder of input copies.

A row holds the time (UTC), the user id (derived from the API key, never a name), the SHA-256
of the uploaded bytes, the path of the stored copy (relative, named by that hash, never the
client's file name), the model's name and version, the verdict kind (``agree``, ``label`` or
``mask``), the corrected label or mask path, and the prediction as JSON.

What is kept of the input, so that nothing patient-identifying is stored:

* DICOM: de-identified with :class:`medsight.io.anonymize.Anonymizer` (PS3.15 basic profile
  subset: names, dates and IDs emptied or pseudonymised, UIDs remapped, private tags removed);
  the pixels and the geometry tags stay, so the copy reads exactly like the original.
* PNG / JPEG: the decoded pixels re-encoded as PNG, dropping text chunks and EXIF.
* NIfTI and the rest: the bytes as uploaded, with the header's free-text fields cleared for NIfTI.

Example:
    >>> store = FeedbackStore("feedback")
    >>> store.add(data, filename=None, user_id="key-1a2b", model_name="compact_cnn",
    ...           model_version="sha256:...", kind="label", label="nodule", prediction={...})
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medsight.errors import MedsightError

DB_NAME = "feedback.db"
INPUTS = "inputs"
KINDS = ("agree", "label", "mask")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_utc TEXT NOT NULL,
    user_id TEXT NOT NULL,
    input_sha256 TEXT NOT NULL,
    input_path TEXT NOT NULL,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('agree', 'label', 'mask')),
    label TEXT,
    mask_path TEXT,
    prediction TEXT NOT NULL
)
"""


class FeedbackError(MedsightError):
    """Feedback that cannot be stored or exported."""


class FeedbackStore:
    """The store under ``root`` (``feedback.db`` + ``inputs/``); created when missing."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.db = self.root / DB_NAME
        (self.root / INPUTS).mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.db, timeout=30)
        con.row_factory = sqlite3.Row
        try:
            with con:
                yield con
        finally:
            con.close()

    def has_input(self, sha256: str) -> str | None:
        """The stored copy's relative path for an input hash, or None."""
        found = sorted((self.root / INPUTS).glob(f"{_check_hash(sha256)}.*"))
        return str(found[0].relative_to(self.root)) if found else None

    def save_input(self, data: bytes, kind: str) -> tuple[str, str]:
        """Store a de-identified copy of uploaded bytes; ``(sha256, relative path)``. ``kind`` is the
        sniffed upload type (``dicom``, ``png``, ``jpeg``, ``nifti``...)."""
        sha = hashlib.sha256(data).hexdigest()
        existing = self.has_input(sha)
        if existing:
            return sha, existing
        suffix, clean = _deidentified(data, kind)
        target = self.root / INPUTS / f"{sha}{suffix}"
        partial = target.with_name(f".{target.name}.part")
        partial.write_bytes(clean)
        partial.replace(target)
        return sha, str(target.relative_to(self.root))

    def save_mask(self, sha256: str, data: bytes, suffix: str) -> str:
        """Store a corrected mask next to its input; the relative path."""
        target = self.root / INPUTS / f"{_check_hash(sha256)}_mask{suffix}"
        target.write_bytes(data)
        return str(target.relative_to(self.root))

    def add(self, *, sha256: str, input_path: str, user_id: str, model_name: str, model_version: str, kind: str,
            prediction: dict[str, Any], label: str | None = None, mask_path: str | None = None) -> dict[str, Any]:
        """Insert one verdict; returns the stored row.

        Raises:
            FeedbackError: an unknown kind, ``label`` without a label, ``mask`` without a mask.
        """
        if kind not in KINDS:
            raise FeedbackError(f"verdict {kind!r}", f"is not one of {', '.join(KINDS)}",
                                "send verdict=agree, verdict=label with label=NAME, or verdict=mask with a mask file")
        if kind == "label" and not label:
            raise FeedbackError("verdict label", "needs the correct label", "send label=NAME (one of the model's)")
        if kind == "mask" and not mask_path:
            raise FeedbackError("verdict mask", "needs the corrected mask", "attach it as multipart field 'mask'")
        row = {"created_utc": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "user_id": user_id,
               "input_sha256": sha256, "input_path": input_path, "model_name": model_name,
               "model_version": model_version, "kind": kind, "label": label, "mask_path": mask_path,
               "prediction": json.dumps(prediction, sort_keys=True)}
        with self._connect() as con:
            cursor = con.execute(f"INSERT INTO feedback ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                                 tuple(row.values()))
            row["id"] = cursor.lastrowid
        return {**row, "prediction": prediction}

    def rows(self) -> list[dict[str, Any]]:
        """Every row, oldest first, the prediction decoded."""
        with self._connect() as con:
            found = con.execute("SELECT * FROM feedback ORDER BY id").fetchall()
        return [{**dict(r), "prediction": json.loads(r["prediction"])} for r in found]


def export_dataset(root: str | Path, out: str | Path) -> dict[str, Any]:
    """Write the feedback as a data set the trainers read; returns the manifest (also ``out/manifest.json``).

    Classification rows become class folders ``out/<label>/<sha>.<ext>`` (``agree`` rows take the
    predicted label, ``label`` rows the corrected one; the newest verdict on an input wins).
    Mask rows become ``out/images/<sha>.<ext>`` + ``out/masks/<sha>.<ext>``. A store with both
    kinds is refused: export one task's feedback per store.

    Raises:
        FeedbackError: no feedback rows, or classification and mask feedback mixed.
    """
    store = FeedbackStore(root)
    latest = {row["input_sha256"]: row for row in store.rows()}
    out = Path(out)
    if not latest:
        raise FeedbackError(store.db, "holds no feedback", "collect verdicts with POST /v1/feedback first")
    kinds = {row["kind"] == "mask" for row in latest.values()}
    if len(kinds) > 1:
        raise FeedbackError(store.db, "mixes mask feedback with label feedback",
                            "keep one feedback folder per model task (--feedback DIR)")
    cases = []
    for sha, row in sorted(latest.items()):
        source = store.root / row["input_path"]
        if row["kind"] == "mask":
            image = out / "images" / source.name
            mask = out / "masks" / Path(row["mask_path"]).name.replace("_mask", "")
            for src, dst in ((source, image), (store.root / row["mask_path"], mask)):
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
            cases.append({"sha256": sha, "image": str(image.relative_to(out)), "mask": str(mask.relative_to(out))})
        else:
            label = row["label"] if row["kind"] == "label" else row["prediction"].get("label")
            target = out / str(label) / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            cases.append({"sha256": sha, "file": str(target.relative_to(out)), "label": label, "kind": row["kind"],
                          "model_version": row["model_version"]})
    manifest = {"task": "segmentation" if kinds == {True} else "classification", "n_cases": len(cases),
                "exported_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cases": cases}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def _check_hash(sha256: str) -> str:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise FeedbackError(f"input hash {sha256[:80]!r}", "is not a SHA-256 hex digest (64 lower-case hex digits)",
                            "send the input.sha256 the prediction answered with, or the file itself")
    return sha256


def _deidentified(data: bytes, kind: str) -> tuple[str, bytes]:
    """``(suffix, bytes)`` of the copy to keep (see the module docstring)."""
    if kind == "dicom":
        import pydicom

        from medsight.io.anonymize import Anonymizer

        ds = pydicom.dcmread(io.BytesIO(data))
        Anonymizer().dataset(ds)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        return ".dcm", buffer.getvalue()
    if kind in ("png", "jpeg"):
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
        return ".png", buffer.getvalue()
    if kind == "nifti":
        return _clean_nifti(data)
    return f".{kind}", data


def _clean_nifti(data: bytes) -> tuple[str, bytes]:
    import gzip

    import nibabel as nib

    raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    image = nib.Nifti1Image.from_bytes(raw)
    image.header["descrip"] = b""
    image.header["aux_file"] = b""
    image.header["db_name"] = b""
    return ".nii", image.to_bytes()
