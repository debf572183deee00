"""The feedback store: one SQLite database (WAL mode) and a managed folder of input copies.

A row holds the time (UTC), the user id (derived from the API key, never a name), the SHA-256
of the uploaded bytes, the path of the stored copy (relative, named by that hash, never the
client's file name), the model's name and version, the verdict kind (``agree``, ``label`` or
``mask``), the corrected label or mask path, and the prediction as JSON.

What is kept of an uploaded file (input or mask) is decided by
:func:`medsight.feedback.deidentify.deidentified`: every DICOM de-identified, pictures re-encoded
without text chunks, NIfTI headers cleared. A verdict is stored atomically: the copies are made in
memory first, then written and the row inserted; when anything fails, the files written for it are
removed and no row is left.

Example:
    >>> store = FeedbackStore("feedback")
    >>> store.add(sha256=sha, user_id="key-1a2b", model_name="compact_cnn", model_version="sha256:...",
    ...           kind="label", label="nodule", prediction={...}, input_data=data, input_kind="png")
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medsight.atomic_write import atomic_write_text
from medsight.errors import MedsightError
from medsight.feedback.deidentify import deidentified

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
        found = sorted((self.root / INPUTS).glob(f"{check_hash(sha256)}.*"))
        return str(found[0].relative_to(self.root)) if found else None

    def input_of(self, sha256: str, user_id: str) -> str | None:
        """The stored copy of an input that ``user_id`` sent with an earlier verdict; None for any other
        user's input and for an unknown hash alike."""
        with self._connect() as con:
            row = con.execute("SELECT input_path FROM feedback WHERE input_sha256 = ? AND user_id = ? LIMIT 1",
                              (check_hash(sha256), user_id)).fetchone()
        return row["input_path"] if row and (self.root / row["input_path"]).is_file() else None

    def add(self, *, sha256: str, user_id: str, model_name: str, model_version: str, kind: str,
            prediction: dict[str, Any], label: str | None = None, input_data: bytes | None = None,
            input_kind: str = "", mask_data: bytes | None = None, mask_kind: str = "") -> dict[str, Any]:
        """Store one verdict, with the input's (``input_data``) and mask's de-identified copies; the row.

        Without ``input_data`` the input must be one ``user_id`` stored before (:meth:`input_of`).
        Everything is checked and de-identified before anything is written; the files and the row are
        then kept together or not at all.

        Raises:
            FeedbackError: an unknown kind, ``label`` without a label, ``mask`` without a mask, a hash that is
                not the input's, or no stored input of this user's for the hash.
            DeidentificationError: an upload that cannot be de-identified.
        """
        check_verdict(kind, label, has_mask=mask_data is not None)
        sha = check_hash(sha256)
        files: list[tuple[Path, bytes]] = []
        input_path = self.has_input(sha) if input_data is not None else self.input_of(sha, user_id)
        if input_data is not None:
            if hashlib.sha256(input_data).hexdigest() != sha:
                raise FeedbackError(f"input {sha[:16]}", "is not the SHA-256 of the bytes sent",
                                    "send the file and let the service hash it")
            if input_path is None:
                suffix, clean = deidentified(input_data, input_kind)
                files.append((self.root / INPUTS / f"{sha}{suffix}", clean))
                input_path = f"{INPUTS}/{sha}{suffix}"
        elif input_path is None:
            raise FeedbackError(f"input {sha[:16]}", "is not among this user's stored inputs",
                                "send the image itself as multipart field 'file'")
        mask_path = None
        if mask_data is not None:
            suffix, clean = deidentified(mask_data, mask_kind)
            files.append((self.root / INPUTS / f"{sha}_mask{suffix}", clean))
            mask_path = f"{INPUTS}/{sha}_mask{suffix}"
        row = {"created_utc": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "user_id": user_id,
               "input_sha256": sha, "input_path": input_path, "model_name": model_name,
               "model_version": model_version, "kind": kind, "label": label, "mask_path": mask_path,
               "prediction": json.dumps(prediction, sort_keys=True)}
        with _written(files), self._connect() as con:
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
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2))
    return manifest


def check_verdict(kind: str, label: str | None, *, has_mask: bool) -> None:
    """Refuse a verdict that cannot be stored as it is.

    Raises:
        FeedbackError: an unknown kind, ``label`` without a label, ``mask`` without a mask.
    """
    if kind not in KINDS:
        raise FeedbackError(f"verdict {kind!r}", f"is not one of {', '.join(KINDS)}",
                            "send verdict=agree, verdict=label with label=NAME, or verdict=mask with a mask file")
    if kind == "label" and not label:
        raise FeedbackError("verdict label", "needs the correct label", "send label=NAME (one of the model's)")
    if kind == "mask" and not has_mask:
        raise FeedbackError("verdict mask", "needs the corrected mask", "attach it as multipart field 'mask'")


@contextmanager
def _written(files: list[tuple[Path, bytes]]) -> Iterator[None]:
    """Write ``files`` (each through a ``.part`` file and a rename); when the block fails, remove the ones
    this call created, so a failed verdict leaves no file behind."""
    created: list[Path] = []
    try:
        for target, data in files:
            fresh = not target.exists()
            partial = target.with_name(f".{target.name}.part")
            try:
                partial.write_bytes(data)
                partial.replace(target)
            finally:
                partial.unlink(missing_ok=True)
            if fresh:
                created.append(target)
        yield
    except BaseException:
        for path in created:
            path.unlink(missing_ok=True)
        raise


def check_hash(sha256: str) -> str:
    """``sha256`` when it is 64 lower-case hex digits.

    Raises:
        FeedbackError: anything else (it could name a path).
    """
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise FeedbackError(f"input hash {sha256[:80]!r}", "is not a SHA-256 hex digest (64 lower-case hex digits)",
                            "send the input.sha256 the prediction answered with, or the file itself")
    return sha256
