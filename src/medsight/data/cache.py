"""A cache of preprocessed samples, so that later folds and runs skip decoding and preprocessing.

An entry is a few named arrays (and a small JSON record) stored under a key that changes
whenever the source file or the preprocessing changes:

* the **source**: each file's path, size and modification time (``mtime_ns``); a file up to
  :data:`CONTENT_HASH_LIMIT` bytes is keyed by a hash of its content instead, so a copied or
  touched small file still hits; a DICOM series folder by the size and time of every file in it;
* the **preprocessing**: a hash of the preprocessing config (and of a short ``kind`` tag naming
  the step, e.g. ``"classify"`` or ``"seg-steps"``) plus :data:`CACHE_VERSION`, bumped when the
  code that fills the cache changes what it stores.

Two modes, chosen by ``data.cache``:

* ``memory``: a per-process dictionary shared by every :class:`SampleCache` of that process,
  so cross-validation folds and repeated runs in one Python session read each file once.
  :func:`clear_memory_cache` empties it. Arrays are shared, not copied: callers must not
  modify them in place.
* ``disk``: one safetensors file per entry under ``data.cache_dir`` (default
  ``~/.cache/medsight/samples``), written to a temporary name and renamed, so a crash never
  leaves a half-written entry under a real name. An entry that cannot be read (truncated,
  corrupt) is removed and rebuilt. Never pickle.

Example:
    >>> cache = SampleCache("memory")
    >>> key = cache.key(["scan.png"], prep, kind="classify")
    >>> entry = cache.get_or_build(key, lambda: ({"image": preprocess(read_image("scan.png"), prep)}, {}))
    >>> entry.arrays["image"].shape, cache.stats
    ((1, 64, 64), {'hits': 0, 'misses': 1, 'rebuilt': 0})
"""

from __future__ import annotations

import hashlib
import json
import os
import stat as stat_module
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medsight.config import DataConfig
from medsight.errors import ConfigError

#: Bump when what the cache stores for a key changes meaning.
CACHE_VERSION = "1"
#: Files up to this size are keyed by their content, larger ones by size and modification time.
CONTENT_HASH_LIMIT = 256 * 1024
DEFAULT_DIR = Path("~/.cache/medsight/samples")
MODES = ("memory", "disk")

_MEMORY: dict[str, CacheEntry] = {}


@dataclass(frozen=True)
class CacheEntry:
    """What one key holds: named arrays and a JSON-able record (spacing, metadata...)."""

    arrays: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)


def clear_memory_cache() -> int:
    """Empty this process's memory cache; returns how many entries it held."""
    count = len(_MEMORY)
    _MEMORY.clear()
    return count


def source_identity(path: str | Path, memo: dict[tuple, str] | None = None) -> str:
    """A string that changes when the file (or the files of a folder) changes.

    Files up to :data:`CONTENT_HASH_LIMIT` bytes: a hash of their content (remembered in
    ``memo`` under the file's path, size and ``mtime_ns``, so an unchanged file is read once);
    larger files and folders: path, size and ``mtime_ns``. A missing path gives
    ``"missing:<path>"``, so the reader, not the cache, reports it.
    """
    text = os.fspath(path)  # plain strings and os calls: this runs once per sample
    try:
        stat = os.stat(text)
    except OSError:
        return f"missing:{text}"
    if stat_module.S_ISDIR(stat.st_mode):
        folder = Path(text)
        parts = []
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            info = file.stat()
            parts.append(f"{file.relative_to(folder)}:{info.st_size}:{info.st_mtime_ns}")
        return f"dir:{folder.resolve()}:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()
    if stat.st_size <= CONTENT_HASH_LIMIT:
        seen = (text, stat.st_size, stat.st_mtime_ns)
        if memo is None or seen not in memo:
            with open(text, "rb") as handle:
                digest = "content:" + hashlib.sha256(handle.read()).hexdigest()
            if memo is None:
                return digest
            memo[seen] = digest
        return memo[seen]
    return f"stat:{os.path.abspath(text)}:{stat.st_size}:{stat.st_mtime_ns}"


def config_hash(config: Any) -> str:
    """SHA-256 of a pydantic model (or any JSON-able value), keys sorted."""
    value = config.model_dump(mode="json") if hasattr(config, "model_dump") else config
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


class SampleCache:
    """Preprocessed samples in memory or on disk, with hit/miss counts.

    Args:
        mode: ``"memory"`` or ``"disk"``.
        cache_dir: the disk cache folder (disk mode); default ``~/.cache/medsight/samples``.

    Raises:
        ConfigError: an unknown mode, or a cache folder that cannot be created.
    """

    def __init__(self, mode: str, cache_dir: str | Path | None = None) -> None:
        if mode not in MODES:
            raise ConfigError(f"data.cache={mode}", "is not a cache mode", "use none, memory or disk")
        self.mode = mode
        self.stats = {"hits": 0, "misses": 0, "rebuilt": 0}
        self.folder = Path(cache_dir or DEFAULT_DIR).expanduser()
        self._contents: dict[tuple, str] = {}
        if mode == "disk":
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(
                    f"data.cache_dir={self.folder}", f"cannot be created ({exc.strerror})",
                    "choose a writable folder, or set data.cache to memory or none",
                ) from exc

    def key(self, sources: Sequence[str | Path], config: Any, *, kind: str, part: str = "") -> str:
        """The key of one sample: its source files, the preprocessing ``config`` and a ``kind`` tag.

        ``config`` is a pydantic model or a JSON-able value, or the string :func:`config_hash`
        returned for it (hash it once when keying many samples). ``part`` tells apart samples of
        one file (``"train/17"`` for row 17 of an ``.npz``).
        """
        identities = [source_identity(source, self._contents) for source in sources]
        digest = config if isinstance(config, str) else config_hash(config)
        record = json.dumps([CACHE_VERSION, kind, identities, part, digest])
        return hashlib.sha256(record.encode()).hexdigest()

    def get(self, key: str) -> CacheEntry | None:
        """The entry under ``key``, or None (a miss). A corrupt disk entry is removed and counts as a miss."""
        entry = _MEMORY.get(key) if self.mode == "memory" else self._read(key)
        self.stats["hits" if entry is not None else "misses"] += 1
        return entry

    def put(self, key: str, arrays: dict[str, np.ndarray], meta: dict[str, Any] | None = None) -> CacheEntry:
        """Store an entry (atomically on disk) and return it."""
        entry = CacheEntry({name: np.ascontiguousarray(a) for name, a in arrays.items()}, dict(meta or {}))
        if self.mode == "memory":
            _MEMORY[key] = entry
        else:
            self._write(key, entry)
        return entry

    def get_or_build(self, key: str, build: Callable[[], tuple[dict[str, np.ndarray], dict[str, Any]]]) -> CacheEntry:
        """The cached entry, or ``build()``'s ``(arrays, meta)`` stored under ``key``.

        Errors raised by ``build`` (an unreadable file) pass through and nothing is stored.
        """
        entry = self.get(key)
        return entry if entry is not None else self.put(key, *build())

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    def _read(self, key: str) -> CacheEntry | None:
        from safetensors import safe_open

        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="np") as handle:
                names = handle.keys()
                arrays = {name: handle.get_tensor(name) for name in names}
                meta = json.loads((handle.metadata() or {}).get("medsight", "{}"))
        except Exception:  # safetensors and json raise several types; all mean "rebuild it"
            self.stats["rebuilt"] += 1
            path.unlink(missing_ok=True)
            return None
        return CacheEntry(arrays, meta)

    def _write(self, key: str, entry: CacheEntry) -> None:
        from safetensors.numpy import save_file

        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, staging = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
        os.close(handle)
        try:
            save_file(entry.arrays, staging, metadata={"medsight": json.dumps(entry.meta, default=_json_default)})
            os.replace(staging, path)
        except OSError as exc:  # a full or read-only disk costs speed, never the run
            warnings.warn(f"{self.folder}: cannot write a cache entry ({exc.strerror}); going on without it",
                          stacklevel=3)
        finally:
            Path(staging).unlink(missing_ok=True)


def cache_from_config(data_cfg: DataConfig) -> SampleCache | None:
    """The cache ``data.cache`` asks for (``data.cache_dir`` for disk), or None for ``none``."""
    return None if data_cfg.cache == "none" else SampleCache(data_cfg.cache, data_cfg.cache_dir)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
