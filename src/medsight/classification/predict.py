"""A classifier network's logits and probabilities on in-memory tensors, in batches, in eval mode."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from medsight.classification.batches import TensorSet
from medsight.models.heads import logits_to_probs
from medsight.runtime.device import autocast, to_device


def predict_probs(
    model: nn.Module,
    data: TensorSet | torch.Tensor,
    *,
    head: str,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    temperature: float | None = None,
) -> np.ndarray:
    """Class probabilities ``(N, num_classes)``; a sigmoid head's one logit gives ``[1 - p, p]``.

    The logits are divided by ``temperature`` first (``None`` means 1: uncalibrated); training
    and evaluation pass the bundle's temperature, so both see the same calibrated probabilities.
    The model is put in eval mode (and moved to ``device`` when one is given; by default it
    stays where its parameters are).
    """
    logits = predict_logits(model, data, batch_size=batch_size, device=device)
    return probs_from_logits(logits, head, temperature)


def probs_from_logits(logits: torch.Tensor, head: str, temperature: float | None = None) -> np.ndarray:
    """``(N, K)`` probabilities of ``logits / temperature`` (``None``: 1) as NumPy; see :func:`predict_probs`."""
    return logits_to_probs(logits / float(temperature or 1.0), head).numpy()


def predict_logits(
    model: nn.Module,
    data: TensorSet | torch.Tensor,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Float32 CPU logits ``(N, outputs)`` in eval mode (see :func:`predict_probs` for ``device``)."""
    images = data.images if isinstance(data, TensorSet) else data
    if device is not None:
        model.to(device)
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else "cpu"
    return batched_logits(model, images, batch_size=batch_size, device=torch.device(device), amp=False)


@torch.inference_mode()
def batched_logits(model: nn.Module, images: torch.Tensor, *, batch_size: int, device: torch.device, amp: bool):
    """Float32 CPU logits of ``images`` in eval mode, batch by batch."""
    model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        with autocast(device, amp):
            outputs.append(model(to_device(images[start : start + batch_size], device)).float().cpu())
    return torch.cat(outputs)
