"""Files written whole or not at all, and a clear error when the disk refuses them.

Every file a run writes goes through :func:`replacing` (or :func:`atomic_write_bytes` /
:func:`atomic_write_text`): the bytes go to ``<name>.<pid>.tmp`` next to the file (one per
process, so processes that write the same file, such as DDP ranks, never share one), are
flushed to disk, then renamed over it, so a reader (or a resumed run) sees the old file or the new one,
never half of either. A write the operating system refuses (a full disk, a quota, a read-only
or unwritable folder) removes the temporary file and raises :class:`~medsight.errors.OutputWriteError`
naming the file, the reason and what to do; the previous file stays as it was.

Example:
    >>> atomic_write_text(Path("runs/demo/metrics.json"), json.dumps(metrics))
    >>> with replacing(Path("runs/demo/model/weights.safetensors")) as tmp:
    ...     save_file(tensors, str(tmp))          # any writer that takes a path
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from medsight.errors import OutputWriteError

#: the errors that mean "no room left": a full file system or an exhausted quota
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block ends it replaces ``path``.

    The temporary file is fsynced, renamed over ``path`` and the folder fsynced. If the block or
    the write fails, the temporary file is removed and ``path`` is untouched; an error the
    operating system reports (it has an ``errno``) becomes :class:`~medsight.errors.OutputWriteError`.

    Raises:
        OutputWriteError: the disk is full, or the folder is read-only or not writable.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        _fsync(tmp, os.O_RDONLY)
        os.replace(tmp, path)
        if hasattr(os, "O_DIRECTORY"):
            _fsync(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno is not None:
            raise write_error(path, exc) from exc
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: readers see the old file or the new one, never half.

    Raises:
        OutputWriteError: the disk is full, or the folder is read-only or not writable.
    """
    with replacing(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_error(path: str | Path, exc: OSError) -> OutputWriteError:
    """The one-line error for ``exc``, raised while writing ``path``: the file, why, and what to do."""
    reason = os.strerror(exc.errno) if exc.errno is not None else str(exc)
    if exc.errno in DISK_FULL:
        return OutputWriteError(path, f"could not be written: the disk is full ({reason})",
                                "free space on that disk or write the run to another folder (--out)")
    return OutputWriteError(path, f"could not be written ({reason})",
                            "check that the folder is writable, or write the run to another folder (--out)")


def _fsync(path: Path, flags: int) -> None:
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
