"""What :func:`medsight.classification.trainer.fit` checks before the first epoch, so that a wrong head,
label or shape stops the run with an error naming it instead of failing (or training) later."""

from __future__ import annotations

import torch
from torch import nn

from medsight.classification.batches import TensorSet, class_counts
from medsight.errors import ConfigError, DatasetError
from medsight.runtime.device import to_device


def check_inputs(train: TensorSet, val: TensorSet, *, head: str, num_classes: int) -> None:
    """The head, both splits' sizes, labels and image shapes, and a training case for every class; raises
    before any epoch runs (the training loop checks the monitored metric)."""
    if head not in ("softmax", "sigmoid"):
        raise ConfigError(f"model.head={head}", "unknown head", "use softmax or sigmoid")
    if head == "sigmoid" and num_classes != 2:
        raise ConfigError("model.head=sigmoid", f"needs 2 classes, got {num_classes}", "use head: softmax")
    for name, data in (("training", train), ("validation", val)):
        if len(data) < 2:
            problem = f"the {name} split has {len(data)} case(s)"
            raise DatasetError(None, problem, "give each split at least 2 cases")
        bad = ((data.labels < 0) | (data.labels >= num_classes)).nonzero()
        if len(bad):
            row = int(bad[0])
            raise DatasetError(
                data.ids[row], f"label {int(data.labels[row])} is outside 0..{num_classes - 1}",
                "check the labels and the class list",
            )
    if train.images.shape[1:] != val.images.shape[1:]:
        raise DatasetError(
            None, f"training images are {tuple(train.images.shape[1:])} but validation images are "
            f"{tuple(val.images.shape[1:])}", "preprocess both splits with the same settings",
        )
    missing = (class_counts(train.labels, num_classes) == 0).nonzero().flatten().tolist()
    if missing:
        raise DatasetError(
            None, f"class index(es) {missing} have no training case", "add cases or split stratified by class"
        )


def check_outputs(model: nn.Module, images: torch.Tensor, *, head: str, num_classes: int, device) -> None:
    """The model's output on a batch of ``images`` has the head's shape ``(N, 1)`` or ``(N, classes)``."""
    want = 1 if head == "sigmoid" else num_classes
    model.eval()
    with torch.inference_mode():
        shape = tuple(model(to_device(images, device)).shape)
    if shape != (len(images), want):
        raise ConfigError(
            "model", f"outputs shape {shape} per batch of {len(images)}, the {head} head needs (N, {want})",
            f"build the model with num_outputs={want}",
        )
