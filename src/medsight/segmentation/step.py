"""One optimiser step of patch-based training, with everything that speeds it up in one place.

:class:`PatchStep` takes a batch of patches and does one step: the DDP wrapper under torchrun, a
compiled forward/backward (``train.compile``, with a fall-back to eager mode), mixed precision
(``train.amp`` on CUDA, ``train.cpu_amp`` on CPUs with native bfloat16) and the weight average
(``train.ema``). :func:`medsight.segmentation.train.train_segmenter` calls it once a batch.

Example:
    >>> step = PatchStep(net, optimizer, make_seg_loss("dice_ce", num_classes=2), cfg, torch.device("cpu"), run_log)
    >>> loss = step(patches, labels)
"""

from __future__ import annotations

import logging

import torch

from medsight.config import RunConfig
from medsight.runtime import distributed
from medsight.runtime.device import autocast, cpu_bf16_active, grad_scaler, to_device

log = logging.getLogger(__name__)


class PatchStep:
    """One optimiser step on a batch of patches: the DDP wrapper (under torchrun), ``train.compile``,
    mixed precision (``train.amp`` on CUDA, with a loss scaler for float16; ``train.cpu_amp``
    on CPU) and the weight average (``train.ema``) in one place.

    The network's own parameters are trained; validation calls the plain ``net`` in eval mode.
    A compiled forward/backward that fails (no C compiler, an unsupported operator) falls back
    to eager mode for the rest of the run, with a note in the log.
    """

    def __init__(self, net, optimizer, loss_fn, cfg: RunConfig, device, run_log, average=None) -> None:
        self.net, self.optimizer, self.loss_fn, self.device, self.run_log = net, optimizer, loss_fn, device, run_log
        self.average = average
        self.eager = distributed.wrap(net, device)
        self.forward = torch.compile(self.eager) if cfg.train.compile else self.eager
        self.amp, self.cpu_amp = cfg.train.amp, cfg.train.cpu_amp
        self.scaler = grad_scaler(device, cfg.train.amp)  # a pass-through unless float16 on CUDA
        active, note = cpu_bf16_active(device, cfg.train.cpu_amp)
        if note:
            self._note(note, warn=not active)

    def _note(self, text: str, *, warn: bool) -> None:
        """``text`` in the run's log, and on the console when it is a warning."""
        self.run_log.note(text)
        if warn and distributed.is_main():
            log.warning(text)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Train on this rank's share of the global batch ``(x, y)``; returns the (shard's) loss."""
        x, y = distributed.shard(x, y)
        x, y = to_device(x, self.device), y.to(self.device)
        self.optimizer.zero_grad()
        try:
            value = self._loss(self.forward, x, y)
        except Exception as exc:  # noqa: BLE001 - torch.compile raises many kinds; eager mode is always safe
            if self.forward is self.eager:
                raise
            self._note(f"torch.compile failed ({type(exc).__name__}: {str(exc)[:200]}); training in eager mode",
                       warn=True)
            self.forward = self.eager
            self.optimizer.zero_grad()
            value = self._loss(self.eager, x, y)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.average is not None:
            self.average.update(self.net)
        return value.detach()

    def _loss(self, forward, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.amp, cpu_bf16=self.cpu_amp):
            logits = forward(x)
        value = self.loss_fn(logits.float(), y)
        self.scaler.scale(value).backward()
        return value
