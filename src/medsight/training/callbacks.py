"""What happens around each epoch: user callbacks, the time limit, logs and the progress display.

The training loop (:func:`medsight.training.loop.fit`) calls :meth:`Callback.on_epoch_end` after
the epoch's checkpoint is on disk; raising there stops training (the run can then be resumed). The
time limit, the ``metrics.csv`` / TensorBoard log and the console output are plain helpers the loop
owns; early stopping and keep-best live on one tracker (:mod:`medsight.training.tracker`).

Example:
    >>> class StopAfter(Callback):
    ...     def on_epoch_end(self, epoch: int, logs: dict) -> None:
    ...         if epoch == 2:
    ...             raise KeyboardInterrupt
"""

from __future__ import annotations

import contextlib
import csv
import io
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from medsight.atomic_write import atomic_write_text, write_error
from medsight.errors import OutputWriteError
from medsight.progress import Heartbeat
from medsight.runtime import distributed
from medsight.runtime.distributed import NullLog

LOSS_EVERY = 10  # steps between reads of the running loss (a device sync) for the live bar


class Callback:
    """Hook called once per epoch; subclass and override :meth:`on_epoch_end`."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        """``epoch`` is 1-based; ``logs`` is the epoch's row of ``metrics.csv``."""


class TimeLimit:
    """``train.time_limit_min``, counted from the run's first start (the time trained before a resume
    included) and read between training steps as well as after each epoch.

    Under DDP rank 0's clock decides: :meth:`reached` broadcasts its answer, so every rank stops
    after the same step.

    Args:
        minutes: the limit (None: no limit).
        seconds_before: seconds trained before this process started (a resumed run).
        clock: seconds (the training loop's ``time.perf_counter``).
        started: the clock when this process started the run (default: now).
    """

    def __init__(self, minutes: float | None, seconds_before: float, clock: Callable[[], float],
                 started: float | None = None) -> None:
        self.minutes = minutes
        self.seconds_before = seconds_before
        self.clock = clock
        self.started = clock() if started is None else started

    def elapsed(self) -> float:
        """The seconds the run counts against its limit (this rank's clock)."""
        return self.seconds_before + self.clock() - self.started

    def passed(self, elapsed: float) -> bool:
        return self.minutes is not None and elapsed > self.minutes * 60

    def reached(self) -> bool:
        """Between two steps: has rank 0's clock passed the limit? (No clock read without a limit.)"""
        return self.minutes is not None and bool(distributed.broadcast(self.passed(self.elapsed())))


def time_limit_reason(minutes: float, cut: tuple[int, int, int] | None = None) -> str:
    """Why a run stopped at its time limit; ``cut`` = ``(steps done, steps, epoch)`` when it stopped
    inside an epoch.

    Example:
        >>> time_limit_reason(2, (40, 305, 1))
        'time limit of 2 min reached after 40 of 305 steps of epoch 1'
    """
    reason = f"time limit of {minutes:g} min reached"
    if cut is None:
        return reason
    done, steps, epoch = cut
    return f"{reason} after {done} of {steps} steps of epoch {epoch}"


class RunLog:
    """``run_dir/metrics.csv`` (rewritten whole from the history) and a TensorBoard log.

    Every write is whole or not at all: ``metrics.csv`` goes through :mod:`medsight.atomic_write`,
    and a TensorBoard write the disk refuses is an :class:`~medsight.errors.OutputWriteError` too.
    Open it with :func:`open_run_log`.
    """

    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.csv_path = run_dir / "metrics.csv"
        self.tensorboard = run_dir / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.tensorboard))

    def write(self, history: list[dict[str, float]]) -> None:
        """Rewrite ``metrics.csv`` from ``history`` and send its last row to TensorBoard."""
        self.write_csv(history)
        if history:
            row = history[-1]
            with self._tensorboard_writes():
                for key, value in row.items():
                    if key != "epoch":
                        self.writer.add_scalar(key, value, int(row["epoch"]))
                self.writer.flush()

    def write_csv(self, history: list[dict[str, float]]) -> None:
        """Rewrite ``metrics.csv``: a header and one whole row per epoch; nothing before the first epoch."""
        if not history:
            return
        columns = list(dict.fromkeys(key for row in history for key in row))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
        atomic_write_text(self.csv_path, text.getvalue())

    def note(self, text: str) -> None:
        with self._tensorboard_writes():
            self.writer.add_text("run", text)

    def close(self) -> None:
        with self._tensorboard_writes():
            self.writer.close()

    @contextlib.contextmanager
    def _tensorboard_writes(self) -> Iterator[None]:
        """TensorBoard writes in a background thread and re-raises its OSError on the next call."""
        try:
            yield
        except OSError as exc:
            raise write_error(self.tensorboard, exc) from exc


@contextlib.contextmanager
def open_run_log(run_dir: Path, *, write: bool) -> Iterator[RunLog | NullLog]:
    """The run's :class:`RunLog` (a :class:`~medsight.runtime.distributed.NullLog` where ``write`` is
    False: the ranks that write nothing), closed when the block ends. A close that fails while an
    error is already ending the run does not hide that error."""
    log = RunLog(run_dir) if write else NullLog()
    try:
        yield log
    except BaseException:
        with contextlib.suppress(OutputWriteError):
            log.close()
        raise
    log.close()


class ProgressDisplay:
    """A live Rich bar on a terminal; otherwise one line per epoch and, during a long epoch, a line
    every :data:`~medsight.progress.HEARTBEAT_SECONDS` (steps done, loss so far, speed, time in the
    epoch); silent when disabled.

    Args:
        enabled: False prints nothing at all (tests, library use).
        epochs: the run's total epochs, for the "epoch 3/20" label.
        metric: the monitored metric, shown in each epoch's line.
        unit: what a step trains on, for the speed (``images``, ``patches``).
        clock: seconds, for the progress lines' pace and speed (default ``time.monotonic``).
    """

    def __init__(self, enabled: bool, epochs: int, metric: str, *, unit: str = "images",
                 clock: Callable[[], float] | None = None) -> None:
        from rich.console import Console

        self.console = Console()
        self.enabled = enabled
        self.live = enabled and self.console.is_terminal
        self.epochs = epochs
        self.metric = metric
        self.unit = unit
        self.heartbeat = Heartbeat(clock=clock) if enabled and not self.live else None
        self._bar: Any = None
        self._task: Any = None
        self._epoch = self._steps = self._done = self._items = 0
        self._epoch_started = 0.0

    def __enter__(self) -> ProgressDisplay:
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                TextColumn("{task.fields[loss]}"), console=self.console, transient=True,
            )
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def start_epoch(self, epoch: int, steps: int, items_per_step: int, done: int = 0) -> None:
        """An epoch of ``steps`` steps of ``items_per_step`` images (or patches) begins, ``done`` of
        them already trained (a cut epoch that a resumed run continues)."""
        self._epoch, self._steps, self._done, self._items = epoch, steps, done, items_per_step
        if self.heartbeat is not None:
            self._epoch_started = self.heartbeat.clock()
        if self._bar is not None:
            if self._task is not None:
                self._bar.remove_task(self._task)
            self._task = self._bar.add_task(f"epoch {epoch}/{self.epochs}", total=steps, completed=done, loss="")

    def advance(self, steps: int, loss: Callable[[], float] | None = None) -> None:
        """``steps`` more steps trained; ``loss()`` gives the epoch's mean loss so far. It is called only
        when shown (every :data:`LOSS_EVERY` steps on the bar, on each progress line), as reading it
        waits for the device."""
        before, self._done = self._done, self._done + steps
        if self._bar is not None:
            shown = loss is not None and self._done // LOSS_EVERY > before // LOSS_EVERY
            fields = {"loss": f"loss {loss():.4f}"} if shown else {}
            self._bar.update(self._task, advance=steps, **fields)
        elif self.heartbeat is not None and self.heartbeat.due():
            print(self._progress_line(loss), file=sys.stdout, flush=True)

    def _progress_line(self, loss: Callable[[], float] | None) -> str:
        seconds = self.heartbeat.clock() - self._epoch_started
        parts = [f"epoch {self._epoch}/{self.epochs}", f"step {self._done}/{self._steps}"]
        if loss is not None:
            parts.append(f"loss {loss():.4f}")
        if seconds > 0:
            parts.append(f"{self._done * self._items / seconds:.1f} {self.unit}/s")
        return "  ".join(parts) + f"  ({seconds:.0f} s into the epoch)"

    def end_epoch(self, row: dict[str, float], note: str = "") -> None:
        if not self.enabled:
            return
        shown = ["train_loss", "val_loss", self.metric, "accuracy"]
        parts = [f"{key} {row[key]:.4f}" for key in dict.fromkeys(shown) if key in row]
        line = f"epoch {int(row['epoch'])}/{self.epochs}  lr {row['lr']:.2e}  " + "  ".join(parts)
        line += f"  ({row['seconds']:.1f} s){note}"
        if self._bar is not None:
            self._bar.console.print(line, highlight=False)
        else:
            print(line, file=sys.stdout, flush=True)
        if self.heartbeat is not None:
            self.heartbeat.beat()
