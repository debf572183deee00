"""What happens around each epoch: user callbacks, early stopping, logs and the progress display.

The training loop calls :meth:`Callback.on_epoch_end` after the epoch's checkpoint is on
disk; raising there stops training (the run can then be resumed). Early stopping, the
``metrics.csv`` / TensorBoard log and the console output are plain helpers the loop owns.

Example:
    >>> class StopAfter(Callback):
    ...     def on_epoch_end(self, epoch: int, logs: dict) -> None:
    ...         if epoch == 2:
    ...             raise KeyboardInterrupt
"""

from __future__ import annotations

import csv
import io
import math
import sys
from pathlib import Path
from typing import Any

from medsight.engine.checkpoint import atomic_write_bytes


class Callback:
    """Hook called once per epoch; subclass and override :meth:`on_epoch_end`."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        """``epoch`` is 1-based; ``logs`` is the epoch's row of ``metrics.csv``."""


def lower_is_better(metric: str) -> bool:
    """Losses go down, every other metric goes up."""
    return metric.endswith("loss")


class EarlyStopping:
    """Tracks the best value of one metric and counts epochs without improvement.

    Args:
        metric: the ``metrics.csv`` column to watch (``auc``, ``val_loss``...).
        patience: stop after this many epochs without improvement; 0 never stops.
    """

    def __init__(self, metric: str, patience: int) -> None:
        self.metric = metric
        self.patience = patience
        self.best: float | None = None
        self.best_epoch = 0
        self.bad_epochs = 0

    def update(self, epoch: int, value: float) -> bool:
        """Record ``value`` for ``epoch``; True when it is the best so far (ties are not)."""
        if self._improves(value):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]

    def _improves(self, value: float) -> bool:
        """The first value always counts; a number beats NaN; NaN never beats anything."""
        best = self.best
        if best is None or math.isnan(best):
            return best is None or not math.isnan(value)
        return value < best if lower_is_better(self.metric) else value > best


class RunLog:
    """``run_dir/metrics.csv`` (rewritten whole from the history) and a TensorBoard log."""

    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.csv_path = run_dir / "metrics.csv"
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def write(self, history: list[dict[str, float]]) -> None:
        """Rewrite ``metrics.csv`` from ``history`` and send its last row to TensorBoard."""
        self.write_csv(history)
        if history:
            row = history[-1]
            for key, value in row.items():
                if key != "epoch":
                    self.writer.add_scalar(key, value, int(row["epoch"]))
            self.writer.flush()

    def write_csv(self, history: list[dict[str, float]]) -> None:
        columns = list(dict.fromkeys(key for row in history for key in row))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
        atomic_write_bytes(self.csv_path, text.getvalue().encode())

    def note(self, text: str) -> None:
        self.writer.add_text("run", text)

    def close(self) -> None:
        self.writer.close()


class ProgressDisplay:
    """A live Rich bar on a terminal; one line per epoch otherwise; silent when disabled.

    Args:
        enabled: False prints nothing at all (tests, library use).
        epochs: the run's total epochs, for the "epoch 3/20" label.
        metric: the monitored metric, shown in each epoch's line.
    """

    def __init__(self, enabled: bool, epochs: int, metric: str) -> None:
        from rich.console import Console

        self.console = Console()
        self.enabled = enabled
        self.live = enabled and self.console.is_terminal
        self.epochs = epochs
        self.metric = metric
        self._bar: Any = None
        self._task: Any = None

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

    def start_epoch(self, epoch: int, batches: int) -> None:
        if self._bar is not None:
            if self._task is not None:
                self._bar.remove_task(self._task)
            self._task = self._bar.add_task(f"epoch {epoch}/{self.epochs}", total=batches, loss="")

    def advance(self, batches: int, loss: float | None = None) -> None:
        if self._bar is not None:
            fields = {} if loss is None else {"loss": f"loss {loss:.4f}"}
            self._bar.update(self._task, advance=batches, **fields)

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
