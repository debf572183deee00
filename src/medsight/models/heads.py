"""Turning a classifier's logits into class probabilities, the same way everywhere."""

from __future__ import annotations

import torch


def logits_to_probs(logits: torch.Tensor, head: str) -> torch.Tensor:
    """``(N, K)`` logits -> ``(N, K)`` probabilities; a sigmoid head's one logit -> ``[1 - p, p]``.

    Example:
        >>> logits_to_probs(torch.zeros(1, 1), "sigmoid")
        tensor([[0.5000, 0.5000]])
    """
    logits = logits.float()
    if head == "sigmoid":
        positive = torch.sigmoid(logits.reshape(-1, 1))
        return torch.cat([1 - positive, positive], dim=1)
    return torch.softmax(logits, dim=1)
