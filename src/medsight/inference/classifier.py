"""A classifier's logits and calibrated probabilities on in-memory tensors: the one prediction path.

:class:`CalibratedClassifier` binds a network to its head and calibration temperature. Every
consumer of a classification bundle takes its probabilities from one: training's calibration and
report (:mod:`medsight.classification.train`), and, through
:class:`medsight.inference.predictor.Predictor`, which holds one, ``medsight evaluate``, predict,
the service, the promotion gate, retrain, export parity, robustness and triage. The network runs
in :func:`batched_logits` (which the training loop's validation also uses) and the temperature and
head are applied in :func:`probs_from_logits`, once, so a probability is the same number whichever
consumer asks for it.

Example:
    >>> classifier = CalibratedClassifier(bundle.build_model(), head="softmax", temperature=1.7)
    >>> logits = classifier.logits(images)                # (N, 2) float32 CPU tensor
    >>> probs = classifier.probabilities(logits)          # (N, 2) calibrated, NumPy
    >>> classifier.predict(images)                        # the same, in one call
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medsight.models.heads import logits_to_probs
from medsight.runtime.device import autocast, to_device


@dataclass
class CalibratedClassifier:
    """A classifier network with its head and calibration temperature.

    Args:
        network: the network; put in eval mode by every prediction (see :meth:`logits`).
        head: ``softmax`` or ``sigmoid``; a sigmoid head's one logit gives ``[1 - p, p]``.
        temperature: the logits are divided by it before the head; ``None`` means 1 (uncalibrated).
        device: where the network runs (it is moved there once, here); ``None`` keeps it where its
            parameters are (the CPU for a network without parameters).
        batch_size: images per forward pass.
    """

    network: nn.Module
    head: str
    temperature: float | None = None
    device: torch.device | str | None = None
    batch_size: int = 256

    def __post_init__(self) -> None:
        if self.device is None:
            param = next(self.network.parameters(), None)
            self.device = param.device if param is not None else torch.device("cpu")
        else:
            self.device = torch.device(self.device)
            self.network.to(self.device)

    def logits(self, images: torch.Tensor, *, eval_mode: bool = True) -> torch.Tensor:
        """Float32 CPU logits ``(N, outputs)`` of ``images`` ``(N, C, *spatial)``.

        ``eval_mode=False`` leaves the modules' train/eval modes as they are (Monte Carlo dropout
        sets them itself); by default the network is put in eval mode.
        """
        images = getattr(images, "images", images)  # a TensorSet's images, or a tensor
        return batched_logits(self.network, images, batch_size=self.batch_size, device=self.device, amp=False,
                              eval_mode=eval_mode)

    def probabilities(self, logits: torch.Tensor, *, calibrated: bool = True) -> np.ndarray:
        """``(N, K)`` probabilities of :meth:`logits`; ``calibrated=False`` leaves out the temperature."""
        return probs_from_logits(logits, self.head, self.temperature if calibrated else None)

    def predict(self, images: torch.Tensor, *, eval_mode: bool = True) -> np.ndarray:
        """Calibrated ``(N, K)`` probabilities of ``images``: :meth:`probabilities` of :meth:`logits`."""
        return self.probabilities(self.logits(images, eval_mode=eval_mode))


def probs_from_logits(logits: torch.Tensor, head: str, temperature: float | None = None) -> np.ndarray:
    """``(N, K)`` probabilities of ``logits / temperature`` (``None``: 1) as NumPy; the one place the
    temperature and the head are applied."""
    return logits_to_probs(logits / float(temperature or 1.0), head).numpy()


@torch.inference_mode()
def batched_logits(model: nn.Module, images: torch.Tensor, *, batch_size: int, device: torch.device, amp: bool,
                   eval_mode: bool = True) -> torch.Tensor:
    """Float32 CPU logits of ``images``, batch by batch (in eval mode unless ``eval_mode=False``)."""
    if eval_mode:
        model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        with autocast(device, amp):
            outputs.append(model(to_device(images[start : start + batch_size], device)).float().cpu())
    return torch.cat(outputs)
