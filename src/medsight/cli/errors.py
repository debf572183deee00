"""One-line errors for the CLI: a MedsightError prints its message and exits non-zero."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from medsight.errors import MedsightError

F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(command: F) -> F:
    """Wrap a command so bad input ends in one line on stderr and exit code 2, no traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except MedsightError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


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
