"""Progress that stays quiet when nobody is watching, and still shows when output goes to a log.

A terminal gets a live Rich bar (:func:`track`, and the training loops' bar); output that is not a
terminal (a log file, a batch job) cannot show a bar, so long loops print a plain line now and
then instead, paced by a :class:`Heartbeat`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import TypeVar

T = TypeVar("T")

#: seconds between two progress lines when the output is not a terminal
HEARTBEAT_SECONDS = 30.0


def track(items: Iterable[T], *, description: str, enabled: bool = True) -> Iterator[T]:
    """Iterate with a Rich progress bar (transient; off when ``enabled`` is False)."""
    if not enabled:
        yield from items
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    total = len(items) if isinstance(items, Sized) else None
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


class Heartbeat:
    """Says when a progress line is due: once ``every`` seconds have passed since the last line.

    Ask :meth:`due` as often as you like (after every step); it is True at most once per
    ``every`` seconds of ``clock``. :meth:`beat` records a line printed for another reason (the
    end of an epoch), so the next one comes ``every`` seconds later.

    Example:
        >>> heartbeat = Heartbeat(30.0)
        >>> for step in steps:
        ...     train(step)
        ...     if heartbeat.due():
        ...         print(f"step {step} ...")
    """

    def __init__(self, every: float = HEARTBEAT_SECONDS, clock: Callable[[], float] | None = None) -> None:
        self.every = every
        self.clock = clock or time.monotonic
        self.last = self.clock()

    def due(self) -> bool:
        """True (and the count starts again) when ``every`` seconds passed since the last line."""
        now = self.clock()
        if now - self.last < self.every:
            return False
        self.last = now
        return True

    def beat(self) -> None:
        """A line was printed now: the next one is due ``every`` seconds from now."""
        self.last = self.clock()
