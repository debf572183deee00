"""One-line errors for the CLI: a MedsightError prints its message and exits non-zero.

Exit codes: 0 success; 2 bad input or options (a :class:`~medsight.errors.MedsightError`, or
Typer's usage errors), nothing done; 3 a batch (``predict``, ``explain``) that wrote a row for
every file but some files failed (their rows say why); 1 anything unexpected.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from medsight.errors import MedsightError

F = TypeVar("F", bound=Callable[..., Any])

#: Bad input or options: the command did nothing.
BAD_INPUT_EXIT = 2
#: A batch ran to its end and wrote every row, but at least one file failed.
FILES_FAILED_EXIT = 3


def reports_errors(command: F) -> F:
    """Wrap a command so bad input ends in one line on stderr and exit code 2, no traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except MedsightError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            sys.exit(BAD_INPUT_EXIT)

    return wrapper  # type: ignore[return-value]


def finish_batch(counts: dict[str, int]) -> None:
    """End a batch command: exit 0 when no file failed, else say how many did and exit 3.

    ``counts``: ``ok``, ``errors`` and (with ``--resume``) ``skipped``, the files already done.

    Example:
        >>> finish_batch({"ok": 97, "errors": 3, "skipped": 0})  # prints, then exits 3
        3 of 100 files failed (see the error column)
    """
    if counts["errors"]:
        total = counts["ok"] + counts["errors"] + counts.get("skipped", 0)
        typer.secho(f"{counts['errors']} of {total} files failed (see the error column)", fg=typer.colors.RED,
                    err=True)
        sys.exit(FILES_FAILED_EXIT)


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["train.lr=0.01", "model.name=resnet18"]`` -> a dict of dotted keys to YAML-parsed values."""
    import yaml

    from medsight.errors import ConfigError

    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair}", "expected KEY=VALUE", "for example --set train.lr=0.01")
        out[key.strip()] = yaml.safe_load(value)
    return out
