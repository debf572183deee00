"""Segmentation's part of the training loop: its epochs of random patches and its validation.

:class:`PatchBatches` draws each step's global batch of patches (foreground oversampled, augmented
by ``augment.*``) from one seeded generator that the checkpoint keeps, so a resumed run goes on
with the same patches; :func:`val_dice` is the validation the best epoch is chosen on. The loop
itself (steps, EMA, compile, checkpoints, time limit) is :func:`medsight.training.loop.fit`.

Example:
    >>> batches = PatchBatches(cfg, data, augment=None)
    >>> for patches, labels in batches.epoch(1, skip=0):
    ...     ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from medsight.config import RunConfig
from medsight.inference.postprocess import probs_to_labels
from medsight.inference.segment import sliding_window_probs
from medsight.segmentation.cases import TrainingSet
from medsight.segmentation.metrics import segmentation_case_metrics
from medsight.segmentation.patches import sample_patches

#: the ``metrics.csv`` columns ``train.early_stopping_metric`` may name for segmentation (val_dice: the default)
METRICS = ("val_dice", "train_loss")


class PatchBatches:
    """``segment.steps_per_epoch`` global batches of patches from the training cases.

    Every rank draws the same global batch from the shared generator (seeded with ``train.seed``; its
    state is part of the checkpoint) and trains on its share of it.
    """

    def __init__(self, cfg: RunConfig, data: TrainingSet, augment: Callable | None) -> None:
        self.images = [data.images[i] for i in data.train_idx]
        self.labels = [data.labels[i] for i in data.train_idx]
        self.patch, self.items = data.patch, data.batch
        self.steps = cfg.segment.steps_per_epoch
        self.foreground_fraction = cfg.segment.foreground_fraction
        self.augment = augment
        self.rng = np.random.default_rng(cfg.train.seed)  # the same on every rank

    def epoch(self, epoch: int, skip: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's batches after the first ``skip``: the generator already stands after them."""
        for _ in range(self.steps - skip):
            x, y = sample_patches(self.images, self.labels, patch_size=self.patch, batch_size=self.items,
                                  foreground_fraction=self.foreground_fraction, generator=self.rng)
            x, y = torch.from_numpy(x), torch.from_numpy(y)
            if self.augment is not None:
                x, y = self.augment(x, y, generator=torch.Generator().manual_seed(int(self.rng.integers(2**31))))
            yield x, y

    def state_dict(self) -> dict[str, Any]:
        return {"numpy_rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["numpy_rng"]


def val_dice(cfg: RunConfig, net: torch.nn.Module, data: TrainingSet, device: torch.device) -> float:
    """Mean over the validation cases of their mean foreground Dice at argmax, inside the ROI, on the
    training grid (the best epoch's score by default)."""
    foreground = list(range(1, data.n_classes))
    per_case = []
    for i in data.val_idx:
        probs = sliding_window_probs(net, data.images[i], patch_size=data.patch, overlap=cfg.segment.overlap,
                                     device=device)
        scores = segmentation_case_metrics(probs_to_labels(probs), data.labels[i],
                                           spacing=data.target or data.cases[i][1].spacing,
                                           labels=foreground, roi=data.rois[i])
        per_case.append(np.nanmean([scores[k]["dice"] for k in foreground]))
    return float(np.nanmean(per_case))
