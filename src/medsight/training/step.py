"""One optimiser step on a batch, with everything that speeds it up in one place, for every task.

:class:`TrainStep` takes a batch ``(x, y)`` and does one step: this rank's share of the global batch
under torchrun, the DDP wrapper, a compiled forward/backward (``train.compile``, with a fall-back to
eager mode), mixed precision (``train.amp`` on CUDA, ``train.cpu_amp`` on CPUs with native bfloat16)
and the weight average (``train.ema``). The training loop (:func:`medsight.training.loop.fit`) calls
it once a batch.

Example:
    >>> step = TrainStep(net, optimizer, make_seg_loss("dice_ce", num_classes=2), cfg.train,
    ...                  torch.device("cpu"), run_log)
    >>> loss, items = step(patches, labels)
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from medsight.config import TrainConfig
from medsight.runtime import distributed
from medsight.runtime.device import autocast, cpu_bf16_active, grad_scaler, to_device
from medsight.training.weight_average import WeightAverage

log = logging.getLogger(__name__)

#: ``loss(outputs, targets)``: the task's training loss on the network's float32 outputs
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class CompileTrial:
    """``train.compile: auto``: the first ``STEPS`` timed steps run eager, the next ``STEPS`` compiled (after
    ``WARMUP`` untimed steps of each: the first compiled ones pay the compilation), and the faster mode is kept
    for the rest of the run. Every step trains; only the mode changes. Under DDP rank 0's timing decides.
    """

    STEPS, WARMUP = 6, 2

    def __init__(self, eager: nn.Module, device: torch.device) -> None:
        self.eager, self.device = eager, device
        self.compiled: nn.Module | None = None
        self.kept: nn.Module = eager
        self.seconds: dict[bool, list[float]] = {True: [], False: []}
        self.seen: dict[bool, int] = {True: 0, False: 0}

    def forward(self, current: nn.Module) -> nn.Module:
        """The mode the next step trains in: eager until its steps are timed, then compiled."""
        if self.seen[True] < self.STEPS + self.WARMUP:
            return self.eager
        if self.compiled is None:
            self.compiled = torch.compile(self.eager)
        return self.compiled

    def start(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def record(self, eager: bool, started: float) -> str:
        """Time the step just done; once both modes are timed, keep the faster and say why ("" before)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seen[eager] += 1
        if self.seen[eager] > self.WARMUP:
            self.seconds[eager].append(time.perf_counter() - started)
        if len(self.seconds[False]) < self.STEPS:
            return ""
        eager_s, compiled_s = (statistics.median(self.seconds[mode]) for mode in (True, False))
        faster = bool(distributed.broadcast(compiled_s < eager_s))
        self.kept = self.compiled if faster else self.eager
        return (f"train.compile auto: a step takes {1e3 * eager_s:.1f} ms eager and {1e3 * compiled_s:.1f} ms "
                f"compiled (medians of {self.STEPS}); training {'compiled' if faster else 'eager'}")


class TrainStep:
    """One optimiser step on this rank's share of a global batch.

    The network's own parameters are trained; validation calls the plain ``net`` (or the average)
    in eval mode. A compiled forward/backward that fails (no C compiler, an unsupported operator)
    falls back to eager mode for the rest of the run, with a note in the log.

    Args:
        net: the network (not wrapped: checkpoints and best weights are taken from it).
        optimizer: over ``net``'s parameters.
        loss_fn: the task's loss on ``(outputs.float(), targets)``.
        cfg: ``amp``, ``cpu_amp`` and ``compile``.
        device: where the batch goes.
        run_log: where notes go (``note(text)``).
        average: the weight average, updated after every step (``train.ema``; None: off).
        scaler: the loss scaler (the training loop's, which it checkpoints; default: a new one).
    """

    def __init__(self, net: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Loss, cfg: TrainConfig,
                 device: torch.device, run_log, average: WeightAverage | None = None,
                 scaler: torch.amp.GradScaler | None = None) -> None:
        self.net, self.optimizer, self.loss_fn, self.device, self.run_log = net, optimizer, loss_fn, device, run_log
        self.average = average
        self.eager = distributed.wrap(net, device)
        self.forward = torch.compile(self.eager) if cfg.compile is True else self.eager
        #: ``train.compile: auto``: the first steps timed eager, then compiled; the faster is kept
        self.trial = CompileTrial(self.eager, device) if cfg.compile == "auto" else None
        self.amp, self.cpu_amp = cfg.amp, cfg.cpu_amp
        # a pass-through unless float16 on CUDA
        self.scaler = grad_scaler(device, cfg.amp) if scaler is None else scaler
        active, note = cpu_bf16_active(device, cfg.cpu_amp)
        if note:
            self._note(note, warn=not active)

    def _note(self, text: str, *, warn: bool) -> None:
        """``text`` in the run's log, and on the console when it is a warning."""
        self.run_log.note(text)
        if warn and distributed.is_main():
            log.warning(text)

    def train(self) -> None:
        """Training mode (dropout, batch statistics) for the epoch's steps."""
        self.eager.train()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Train on this rank's share of the global batch ``(x, y)``.

        Returns:
            ``(loss, items)``: the share's mean loss (detached, on the device) and its number of items.
        """
        x, y = distributed.shard(x, y)
        x, y = to_device(x, self.device), y.to(self.device, non_blocking=True)
        if self.trial is not None:
            self.forward = self.trial.forward(self.forward)
        started = self.trial.start() if self.trial is not None else 0.0
        self.optimizer.zero_grad(set_to_none=True)
        try:
            value = self._loss(self.forward, x, y)
        except Exception as exc:  # noqa: BLE001 - torch.compile raises many kinds; eager mode is always safe
            if self.forward is self.eager:
                raise
            self._note(f"torch.compile failed ({type(exc).__name__}: {str(exc)[:200]}); training in eager mode",
                       warn=True)
            self.forward = self.eager
            self.trial = None
            self.optimizer.zero_grad(set_to_none=True)
            value = self._loss(self.eager, x, y)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.trial is not None:
            verdict = self.trial.record(self.forward is self.eager, started)
            if verdict:
                self.forward = self.trial.kept
                self.trial = None
                self._note(verdict, warn=False)
        if self.average is not None:
            self.average.update(self.net)
        return value.detach(), len(y)

    def _loss(self, forward, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.amp, cpu_bf16=self.cpu_amp):
            outputs = forward(x)
        value = self.loss_fn(outputs.float(), y)
        self.scaler.scale(value).backward()
        return value
