"""``train.compile: auto``: the first steps are timed eager, then compiled, and the faster mode is kept for the
rest of the run, with the timings in the run's log; every step trains, and a failed compilation falls back to
eager mode as ``train.compile: true`` does."""

from __future__ import annotations

import torch

from medsight.config import TrainConfig
from medsight.training.step import CompileTrial, TrainStep


class Notes:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def note(self, text: str) -> None:
        self.lines.append(text)


def _step(monkeypatch=None):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    notes = Notes()
    step = TrainStep(net, optimizer, torch.nn.functional.cross_entropy, TrainConfig(compile="auto", amp=False),
                     torch.device("cpu"), notes)
    return step, net, notes


def test_the_faster_mode_is_kept_after_both_are_timed():
    step, net, notes = _step()
    x, y = torch.randn(16, 8), torch.randint(0, 2, (16,))
    before = [p.detach().clone() for p in net.parameters()]
    total = 2 * (CompileTrial.STEPS + CompileTrial.WARMUP)
    for _ in range(total - 1):
        step(x, y)
        assert step.trial is not None and not notes.lines  # still timing
    step(x, y)
    assert step.trial is None and len(notes.lines) == 1
    line = notes.lines[0]
    assert line.startswith("train.compile auto: a step takes") and "ms eager and" in line
    kept_compiled = line.endswith("training compiled")
    assert (step.forward is not step.eager) == kept_compiled
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))  # it trained
    step(x, y)  # and goes on in the kept mode
    assert len(notes.lines) == 1


def test_a_failed_compilation_ends_the_trial_in_eager_mode(monkeypatch):
    step, _, notes = _step()

    def broken(module):
        def fails(*args, **kwargs):
            raise RuntimeError("no C compiler")
        return fails

    monkeypatch.setattr(torch, "compile", broken)
    x, y = torch.randn(16, 8), torch.randint(0, 2, (16,))
    for _ in range(CompileTrial.STEPS + CompileTrial.WARMUP + 1):
        loss, items = step(x, y)
        assert items == 16 and torch.isfinite(loss)
    assert step.trial is None and step.forward is step.eager
    assert any("torch.compile failed (RuntimeError: no C compiler)" in line for line in notes.lines)
