"""Is a saliency map faithful? Deletion and insertion curves against a random-order baseline.

Deletion removes the most salient pixels first (replacing them by the image mean) and tracks
the explained class's probability: a faithful map makes it fall fast (a low area under the
curve). Insertion starts from the mean image and puts the most salient pixels back first: a
faithful map makes it rise fast (a high area). The same curves with the pixels in random
order are the baseline every method must beat.

Example:
    >>> deletion, insertion = deletion_insertion(model, x, heat, target=1)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def deletion_insertion(model: nn.Module, x: torch.Tensor, heat: np.ndarray, *, target: int,
                       head: str = "softmax", steps: int = 20) -> tuple[float, float]:
    """Areas under the deletion and insertion curves (fraction of pixels 0..1 vs probability)."""
    from medsight.explain.cam import _prob
    from medsight.models.heads import logits_to_probs

    order = np.argsort(-heat.ravel(), kind="stable")
    fill = float(x.mean())
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    deleted, inserted = [], []
    for k in range(steps + 1):
        chosen = torch.from_numpy(order[: round(k / steps * order.size)])
        gone = flat.clone()
        gone[..., chosen] = fill
        back = torch.full_like(flat, fill)
        back[..., chosen] = flat[..., chosen]
        deleted.append(gone.reshape(x.shape))
        inserted.append(back.reshape(x.shape))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            batch = torch.cat(deleted + inserted)
            probs = _prob(logits_to_probs(model(batch), head), target).numpy()
    finally:
        model.train(was_training)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    return float(np.trapezoid(probs[: steps + 1], fractions)), float(np.trapezoid(probs[steps + 1 :], fractions))


def random_order_map(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A map whose ranking is a random permutation: the baseline of the curves."""
    return rng.random(shape).astype(np.float32)
