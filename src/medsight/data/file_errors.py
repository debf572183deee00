"""One bad file never stops a batch: whatever goes wrong with one file becomes that file's one-line reason.

The readers turn the failures they know into a :class:`~medsight.errors.MedsightError`. The
batch loops (``predict``, ``explain``, ``data inspect``, training with ``on_bad_file="skip"``)
also catch any other exception raised while one file is read or processed, as a last safety
net, and record it with :func:`file_error` instead of letting one file end the run.
``KeyboardInterrupt`` and ``SystemExit`` are not exceptions of that kind and still stop it.

Example:
    >>> try:
    ...     sample = read_image(path)
    ... except Exception as exc:  # one file's failure, recorded; the loop goes on
    ...     row["error"] = one_line(file_error(path, exc))
"""

from __future__ import annotations

import json
from pathlib import Path

from medsight.atomic_write import atomic_write_text
from medsight.errors import MedsightError, UnreadableFileError

#: The most characters of a foreign exception's message kept in a file's reason.
DETAIL_LIMIT = 200


def file_error(path: str | Path, exc: Exception) -> MedsightError:
    """``exc`` as the error of the file at ``path``.

    A :class:`MedsightError` is returned as it is; any other exception (a decoding library's
    own) becomes an :class:`UnreadableFileError` that names the file, the exception's type
    and its message on one line.
    """
    if isinstance(exc, MedsightError):
        return exc
    detail = one_line(exc) or "no message"
    if len(detail) > DETAIL_LIMIT:
        detail = detail[: DETAIL_LIMIT - 3] + "..."
    return UnreadableFileError(
        path, f"cannot be read ({type(exc).__name__}: {detail})",
        "check that the file is complete and is the type its name says; re-export it, or leave it out",
    )


def one_line(error: Exception | str) -> str:
    """The text of ``error`` with every run of whitespace (newlines included) made one space."""
    return " ".join(str(error).split())


def write_skipped_files(out: Path, bad: list[dict[str, str]]) -> None:
    if not bad:
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "skipped_files.json", json.dumps(bad, indent=2))
    from rich.console import Console

    Console(stderr=True).print(
        f"[yellow]skipped {len(bad)} unreadable file(s); listed in {out / 'skipped_files.json'}[/yellow]"
    )
