"""Progress when the output is not a terminal: a line every 30 s during a long epoch, never more often."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

from test_trainer import blobs, config, small_cnn

from medsight import progress
from medsight.classification.trainer import fit
from medsight.progress import Heartbeat
from medsight.training.callbacks import ProgressDisplay


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_heartbeat_is_due_once_every_30_seconds() -> None:
    clock = FakeClock()
    heartbeat = Heartbeat(30.0, clock)
    due = []
    for _ in range(20):  # 0..100 s in steps of 5 s
        clock.now += 5.0
        if heartbeat.due():
            due.append(clock.now)
    assert due == [30.0, 60.0, 90.0]
    clock.now = 100.0
    heartbeat.beat()  # an epoch line just printed: the next progress line 30 s later
    clock.now = 129.0
    assert not heartbeat.due()
    clock.now = 130.0
    assert heartbeat.due()


def test_a_long_epoch_prints_a_line_every_30_seconds_when_not_a_terminal(capsys) -> None:
    """100 steps of 16 images, 7 s each: a line after steps 5, 10, 15... (35 s apart: the first
    step at which 30 s have passed), with the steps done, the loss so far, the speed and the time."""
    clock = FakeClock()
    display = ProgressDisplay(True, 3, "auc", clock=clock)
    assert not display.live  # pytest captures the output: not a terminal
    with display:
        display.start_epoch(1, 100, 16)
        for step in range(1, 101):
            clock.now += 7.0
            display.advance(1, lambda step=step: 1.0 / step)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 20
    assert lines[0] == "epoch 1/3  step 5/100  loss 0.2000  2.3 images/s  (35 s into the epoch)"
    assert lines[1] == "epoch 1/3  step 10/100  loss 0.1000  2.3 images/s  (70 s into the epoch)"
    steps = [int(re.search(r"step (\d+)/", line).group(1)) for line in lines]
    assert steps == list(range(5, 101, 5))


def test_fit_prints_progress_lines_during_an_epoch_when_not_a_terminal(tmp_path: Path, monkeypatch, capsys) -> None:
    """A clock that advances 31 s a reading makes every step's line due: 10 steps an epoch print 10
    progress lines, then the epoch's own line."""
    readings = iter(range(0, 10**6, 31))
    monkeypatch.setattr(progress, "time", SimpleNamespace(monotonic=lambda: float(next(readings))), raising=False)
    fit(small_cnn(2), blobs(160, 2, seed=1), blobs(32, 2, seed=2), cfg=config(epochs=1), head="softmax",
        num_classes=2, run_dir=tmp_path, progress=True)
    lines = capsys.readouterr().out.splitlines()
    progress_lines = [line for line in lines if " step " in line]
    assert [re.search(r"step (\d+)/10 ", line).group(1) for line in progress_lines] == [str(k) for k in range(1, 11)]
    assert all(re.search(r"loss \d+\.\d{4}  \d+\.\d images/s", line) for line in progress_lines)
    assert lines[-1].startswith("epoch 1/1  lr ")


def test_a_disabled_display_prints_nothing(capsys) -> None:
    clock = FakeClock()
    display = ProgressDisplay(False, 1, "auc", clock=clock)
    with display:
        display.start_epoch(1, 10, 4)
        for _ in range(10):
            clock.now += 100.0
            display.advance(1, lambda: 0.5)
    assert capsys.readouterr().out == ""
