"""Classification's part of the training loop: its loss, its epochs' batches and its validation.

:func:`fit` trains a classifier on in-memory tensors with the one training loop
(:func:`medsight.training.loop.fit`), which brings early stopping, keep-best, the time limit,
checkpoints and exact resume, ``train.ema`` and ``train.compile``. Each epoch draws all its
randomness (shuffling, balanced sampling, augmentation, dropout) from seeds derived from
``(cfg.seed, epoch)``, so a run stopped after epoch k (or cut inside it by its time limit) and
resumed ends with exactly the weights of an uninterrupted run.

Example:
    >>> result = fit(model, train, val, cfg=TrainConfig(epochs=5), head="softmax", num_classes=2,
    ...              run_dir=Path("runs/demo"))
    >>> model.load_state_dict(result.best_state)
    >>> probs = CalibratedClassifier(model, head="softmax").predict(val)     # (N, 2)
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medsight.classification.batches import TensorSet, inverse_frequency_weights, iterate_batches
from medsight.classification.fit_checks import check_inputs, check_outputs
from medsight.classification.metrics import classification_metrics
from medsight.config import TrainConfig
from medsight.inference.classifier import batched_logits
from medsight.metric_names import METRIC_KEYS
from medsight.models.freezing import parameter_groups
from medsight.models.heads import logits_to_probs
from medsight.runtime import distributed
from medsight.runtime.device import pick_device, set_threads
from medsight.training.callbacks import Callback
from medsight.training.loop import FitResult, Task
from medsight.training.loop import fit as fit_loop
from medsight.training.optim import build_optimizer
from medsight.training.step import Loss

__all__ = ["FitResult", "fit", "make_loss"]


def fit(
    model: nn.Module,
    train: TensorSet,
    val: TensorSet,
    *,
    cfg: TrainConfig,
    head: str,
    num_classes: int,
    run_dir: Path,
    augment: Callable | None = None,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
) -> FitResult:
    """Train ``model`` on ``train``, validate on ``val`` every epoch, keep the best weights.

    Writes ``run_dir/checkpoints/last.safetensors`` (every epoch), ``run_dir/metrics.csv`` and
    ``run_dir/tensorboard/`` (:func:`medsight.training.loop.fit`). Under ``torchrun`` the model
    trains as DDP, each rank on its share of every global batch; rank 0 validates and writes.

    Args:
        model: maps ``(N, C, *spatial)`` to logits ``(N, num_classes)`` (softmax head) or
            ``(N, 1)`` (sigmoid head).
        train: the training tensors.
        val: the validation tensors (loss and metrics every epoch; the best epoch is chosen on them).
        cfg: optimizer, schedule, loss options, early stopping, seed, threads, AMP, compile, EMA, time limit.
        head: ``"softmax"`` (cross-entropy) or ``"sigmoid"`` (binary, BCE on one logit).
        num_classes: number of classes (2 for the sigmoid head).
        run_dir: the run folder.
        augment: ``augment(images, None, generator=g) -> (images, None)``, applied to each training
            batch on the CPU before it moves to the device; ``g`` is the epoch's generator.
        resume: continue from the checkpoint in ``run_dir``; False starts over.
        callbacks: ``on_epoch_end(epoch, row)`` after each epoch's checkpoint; raising stops the run.
        progress: live bar on a terminal; otherwise one line per epoch; False prints nothing.

    Raises:
        ConfigError: a head/metric/model output that does not fit the task, or settings DDP cannot honour.
        DatasetError: empty splits, labels outside ``0..num_classes-1``, a class with no training case.
        MedsightError: ``resume=True`` without a usable checkpoint.
        OutputWriteError: the disk is full (or the folder not writable); the last checkpoint is kept.
    """
    check_inputs(train, val, head=head, num_classes=num_classes)
    distributed.check_config(cfg, distributed.world_size())
    set_threads(distributed.threads_per_process(cfg.num_threads))
    device = pick_device(cfg.device)
    model.to(device)
    if train.images.ndim == 4:  # channels-last convolutions are ~1.5-2x faster on CPU
        model.to(memory_format=torch.channels_last)
    check_outputs(model, train.images[:2], head=head, num_classes=num_classes, device=device)
    weights = inverse_frequency_weights(train.labels, num_classes)
    val_loss = make_loss(head, 0.0, None)

    def validate(network: nn.Module) -> dict[str, float]:
        return _validate(network, val, cfg, head=head, loss_fn=val_loss, device=device)

    task = Task(
        net=model,
        optimizer=build_optimizer(parameter_groups(model, cfg), cfg),
        loss=make_loss(head, cfg.label_smoothing, weights.to(device) if cfg.class_weights == "balanced" else None),
        batches=TensorBatches(train, cfg, weights[train.labels] if cfg.balanced_sampling else None, augment),
        validate=validate,
        metrics=METRICS,
    )
    result = fit_loop(task, cfg=cfg, device=device, run_dir=run_dir, resume=resume, callbacks=callbacks,
                      progress=progress)
    model.to(memory_format=torch.contiguous_format)  # hand back a plain model (export, bundles)
    return result


def make_loss(head: str, label_smoothing: float, class_weights: torch.Tensor | None) -> Loss:
    """The training (or, with no smoothing and no weights, validation) loss for ``head``.

    ``softmax``: cross-entropy with label smoothing and optional per-class weights.
    ``sigmoid``: BCE-with-logits on one logit, targets smoothed towards 0.5, and
    ``pos_weight = w[1] / w[0]`` (negatives per positive) when class weights are given.
    """
    if head == "softmax":
        return lambda logits, labels: F.cross_entropy(
            logits.float(), labels, weight=class_weights, label_smoothing=label_smoothing
        )
    pos_weight = None if class_weights is None else class_weights[1:2] / class_weights[0]

    def binary(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        target = labels.float() * (1.0 - label_smoothing) + 0.5 * label_smoothing
        return F.binary_cross_entropy_with_logits(logits.float().reshape(-1), target, pos_weight=pos_weight)

    return binary


#: the ``metrics.csv`` columns ``train.early_stopping_metric`` may name
METRICS = ("val_loss", "train_loss", *METRIC_KEYS)


class TensorBatches:
    """An epoch of shuffled (optionally class-balanced) batches of ``data``, augmented on the CPU.

    Every epoch seeds its own generator and the global torch RNG (dropout) from ``(cfg.seed, epoch)``,
    so nothing random needs checkpointing; a cut epoch draws its first ``skip`` batches and their
    augmentations again, without training on them, to go on with the same streams.
    """

    def __init__(self, data: TensorSet, cfg: TrainConfig, sample_weights: torch.Tensor | None,
                 augment: Callable | None) -> None:
        self.data, self.batch_size, self.seed = data, cfg.batch_size, cfg.seed
        self.sample_weights, self.augment = sample_weights, augment
        self.steps = len(data) // cfg.batch_size if len(data) > cfg.batch_size else 1
        self.items = cfg.batch_size

    def epoch(self, epoch: int, skip: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # a cut epoch continued (skip > 0) keeps the global RNG as the checkpoint restored it
        generator = seed_epoch(self.seed, epoch, seed_global=skip == 0)
        batches = iterate_batches(
            self.data, self.batch_size, shuffle=True, generator=generator, sampler_weights=self.sample_weights,
            drop_last=len(self.data) > self.batch_size,
        )
        for index, (images, labels) in enumerate(batches, 1):
            if self.augment is not None:
                images, _ = self.augment(images, None, generator=generator)
            if index > skip:
                yield images, labels

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore: each epoch seeds its own streams."""


def seed_epoch(seed: int, epoch: int, *, seed_global: bool = True) -> torch.Generator:
    """Seed the global torch RNG (dropout) and return the epoch's generator, both from (seed, epoch).

    ``seed_global=False`` (a cut epoch continued) leaves the global RNG as the checkpoint restored it.
    """
    data_seed, global_seed = np.random.SeedSequence([seed % 2**64, epoch]).generate_state(2, dtype=np.uint64)
    if seed_global:
        torch.manual_seed(int(global_seed))
    return torch.Generator().manual_seed(int(data_seed))


def _validate(model: nn.Module, val: TensorSet, cfg: TrainConfig, *, head: str, loss_fn: Loss,
              device: torch.device) -> dict[str, float]:
    """The validation loss and every scalar classification metric, for the epoch's row."""
    logits = batched_logits(model, val.images, batch_size=max(cfg.batch_size, 256), device=device, amp=cfg.amp)
    scores = classification_metrics(val.labels.numpy(), logits_to_probs(logits, head).numpy())
    return {"val_loss": float(loss_fn(logits, val.labels)),
            **{k: float(v) for k, v in scores.items() if isinstance(v, numbers.Real)}}
