"""A folder registry of model bundles: ``registry.json`` + ``versions/<n>/model``.

Each version records its metrics, the hash of its training data, its parent version, the bundle's
content hash, free notes (e.g. the promotion gate's numbers) and a stage: ``candidate``,
``production`` (at most one) or ``archived`` (a former production). ``promote`` makes a version
production and archives the previous one; ``rollback`` brings the previous production back.
Every change holds an exclusive lock on ``.lock`` and rewrites ``registry.json`` atomically
(temporary file + rename), so a service watching the file never reads half of it.

Example:
    >>> reg = ModelRegistry("registry")
    >>> v = reg.register("runs/demo/model", metrics={"val_auc": 0.93}, data_hash="ab12", parent=None)
    >>> reg.promote(v)["stage"]
    'production'
"""

from __future__ import annotations

import fcntl
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medsight.atomic_write import atomic_write_text
from medsight.bundle import bundle_hash
from medsight.errors import MedsightError

INDEX = "registry.json"
LOCK = ".lock"
STAGES = ("candidate", "production", "archived")


class RegistryError(MedsightError):
    """A registry folder, version or operation that cannot be used."""


class ModelRegistry:
    """The registry in ``root`` (created on first write)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.index = self.root / INDEX

    # --- reading -----------------------------------------------------------------------------------
    def read(self) -> dict[str, Any]:
        """The whole index: ``{"versions": [...], "production_history": [n, ...]}``.

        Raises:
            RegistryError: ``registry.json`` exists but is not valid JSON.
        """
        if not self.index.is_file():
            return {"versions": [], "production_history": []}
        try:
            return json.loads(self.index.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RegistryError(self.index, f"is not valid JSON ({type(exc).__name__})",
                                "restore it from a backup; the bundles are under versions/") from exc

    def list(self) -> list[dict[str, Any]]:
        """Every version, oldest first."""
        return self.read()["versions"]

    def get(self, version: int) -> dict[str, Any]:
        """One version's record.

        Raises:
            RegistryError: no such version.
        """
        return _find(self.read(), version, self.root)

    def production(self) -> dict[str, Any] | None:
        """The production version's record, or None when nothing was promoted yet."""
        return next((v for v in self.list() if v["stage"] == "production"), None)

    def bundle_path(self, version: int) -> Path:
        """The bundle folder of ``version``."""
        return self.root / self.get(version)["path"]

    def production_bundle(self) -> Path:
        """The bundle folder of the production version.

        Raises:
            RegistryError: no version is in production.
        """
        record = self.production()
        if record is None:
            raise RegistryError(self.root, "has no production version",
                                "promote one: medsight registry promote VERSION --registry DIR")
        return self.root / record["path"]

    # --- changes -----------------------------------------------------------------------------------
    def register(self, bundle: str | Path, *, metrics: dict[str, Any] | None = None, data_hash: str | None = None,
                 parent: int | None = None, notes: dict[str, Any] | None = None) -> int:
        """Copy ``bundle`` into the registry as a new candidate; returns its version number.

        ``metrics`` and ``data_hash`` default to the bundle's own (``bundle.json`` metrics and
        provenance ``data_hash``).

        Raises:
            BundleError: ``bundle`` is not a readable bundle folder.
            RegistryError: ``parent`` is not a version of this registry.
        """
        from medsight.bundle import load_bundle

        loaded = load_bundle(bundle, weights=False)
        with self._locked() as index:
            if parent is not None:
                _find(index, parent, self.root)
            number = max((v["version"] for v in index["versions"]), default=0) + 1
            target = self.root / "versions" / str(number) / "model"
            if target.parent.exists():
                shutil.rmtree(target.parent)
            shutil.copytree(bundle, target)
            index["versions"].append({
                "version": number,
                "stage": "candidate",
                "parent": parent,
                "path": str(target.relative_to(self.root)),
                "model": loaded.model.name,
                "task": loaded.task,
                "hash": bundle_hash(target),
                "metrics": dict(loaded.metrics if metrics is None else metrics),
                "data_hash": data_hash if data_hash is not None else loaded.data.hash,
                "registered": _now(),
                "notes": dict(notes or {}),
            })
        return number

    def annotate(self, version: int, **notes: Any) -> dict[str, Any]:
        """Add ``notes`` (e.g. ``gate={...}``) to a version's record; returns the record."""
        with self._locked() as index:
            record = _find(index, version, self.root)
            record["notes"].update(notes)
            return dict(record)

    def promote(self, version: int) -> dict[str, Any]:
        """Make ``version`` production; the previous production becomes ``archived``.

        Raises:
            RegistryError: no such version, or it is already production.
        """
        with self._locked() as index:
            record = _find(index, version, self.root)
            if record["stage"] == "production":
                raise RegistryError(f"version {version}", "is already in production", "promote another version")
            for other in index["versions"]:
                if other["stage"] == "production":
                    other["stage"] = "archived"
            record["stage"] = "production"
            record["promoted"] = _now()
            index["production_history"].append(version)
            return dict(record)

    def rollback(self) -> dict[str, Any]:
        """Production goes back to the version that was production before the current one.

        The current production becomes ``archived``. Returns the restored version's record.

        Raises:
            RegistryError: there is no earlier production to go back to.
        """
        with self._locked() as index:
            history = index["production_history"]
            if len(history) < 2:
                raise RegistryError(self.root, "has no earlier production version to roll back to",
                                    "promote a version instead: medsight registry promote VERSION")
            current = _find(index, history.pop(), self.root)
            current["stage"] = "archived"
            previous = _find(index, history[-1], self.root)
            previous["stage"] = "production"
            previous["promoted"] = _now()
            return dict(previous)

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """The index under an exclusive lock; written back atomically when the block ends without error."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / LOCK).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                index = self.read()
                yield index
                atomic_write_text(self.index, json.dumps(index, indent=2))
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _find(index: dict[str, Any], version: int, root: Path) -> dict[str, Any]:
    for record in index["versions"]:
        if record["version"] == version:
            return record
    known = ", ".join(str(v["version"]) for v in index["versions"]) or "none"
    raise RegistryError(f"version {version}", f"is not in the registry {root} (versions: {known})",
                        "list them with: medsight registry list --registry DIR")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
