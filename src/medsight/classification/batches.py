"""Preprocessed data held in memory, and the batches the training loop reads from it.

Decoding happens once (see :mod:`medsight.classification.prepare`); every epoch then slices the
cached tensors, so there is no DataLoader, no worker processes and no per-epoch decoding.

Example:
    >>> labels = torch.tensor([0] * 8 + [1] * 2)
    >>> data = TensorSet(torch.zeros(10, 1, 8, 8), labels, [str(i) for i in range(10)])
    >>> weights = inverse_frequency_weights(data.labels, 2)[data.labels]   # per-sample weights
    >>> g = torch.Generator().manual_seed(0)
    >>> for images, labels in iterate_batches(data, 4, shuffle=True, generator=g, sampler_weights=weights):
    ...     ...
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from medsight.errors import DatasetError


@dataclass
class TensorSet:
    """A split held in memory.

    Attributes:
        images: ``(N, C, *spatial)`` float32, already preprocessed.
        labels: ``(N,)`` int64 class indices.
        ids: one case id per row (a file path, or ``file.npz#split/index``) for per-case output.
    """

    images: torch.Tensor
    labels: torch.Tensor
    ids: list[str]

    def __post_init__(self) -> None:
        sizes = {"images": self.images.shape[0], "labels": self.labels.shape[0], "ids": len(self.ids)}
        if len(set(sizes.values())) != 1:
            raise DatasetError(
                None, f"a TensorSet needs one row per case, got {sizes}", "build it from one item list"
            )

    def __len__(self) -> int:
        return len(self.ids)


def class_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """How many rows carry each class index, as a ``(num_classes,)`` int64 tensor."""
    return torch.bincount(labels.long(), minlength=num_classes)[:num_classes]


def inverse_frequency_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class weights ``N / (K * n_c)`` (scikit-learn's "balanced"); 0 for an absent class.

    The weights average to 1 over the rows, so a weighted loss keeps its scale. Indexing the
    result with the labels gives per-sample weights for balanced sampling.

    Example:
        >>> inverse_frequency_weights(torch.tensor([0, 0, 0, 1]), 2)
        tensor([0.6667, 2.0000])
    """
    counts = class_counts(labels, num_classes).double()
    weights = len(labels) / (num_classes * counts.clamp(min=1))
    return torch.where(counts > 0, weights, torch.zeros_like(weights)).float()


def iterate_batches(
    data: TensorSet,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None,
    sampler_weights: torch.Tensor | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(images, labels)`` batches from the in-memory tensors.

    Args:
        data: the split to read.
        batch_size: rows per batch.
        shuffle: a fresh random order (drawn from ``generator``); else the stored order.
        generator: the source of randomness, so an epoch is reproducible from its seed.
        sampler_weights: ``(N,)`` non-negative per-row weights; when given, the epoch draws N
            rows *with replacement* in proportion to them (balanced sampling) and ``shuffle``
            is implied.
        drop_last: skip a final batch smaller than ``batch_size`` (training: keeps batch-norm
            away from a batch of one).
    """
    n = len(data)
    if sampler_weights is not None:
        weights = sampler_weights.double()
        order: torch.Tensor | None = torch.multinomial(weights, n, replacement=True, generator=generator)
    elif shuffle:
        order = torch.randperm(n, generator=generator)
    else:
        order = None
    stop = n - n % batch_size if drop_last and n > batch_size else n
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, stop)
        if order is None:
            yield data.images[start:end], data.labels[start:end]
        else:
            index = order[start:end]
            yield data.images[index], data.labels[index]
