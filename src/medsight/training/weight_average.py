"""An exponential moving average (EMA) of a network's weights, updated after every optimiser step.

The averaged copy changes more smoothly than the trained weights, so it is usually the better
model to validate, keep and ship when the training loss is noisy (small patches, small data).
The decay ramps up as ``min(decay, (1 + t) / (10 + t))`` over the first steps ``t``, so the
average is not stuck near the random initial weights (the warm-up of timm's ``ModelEmaV2``).

Example:
    >>> average = WeightAverage(net, decay=0.999)
    >>> for x, y in batches:
    ...     ...  # forward, backward, optimizer.step()
    ...     average.update(net)
    >>> validate(average.network)
"""

from __future__ import annotations

import copy

import torch

from medsight.errors import ConfigError


class WeightAverage:
    """``network``: a frozen copy of the trained net whose floating-point weights and buffers are the
    EMA; ``steps``: how many updates it has seen (part of the checkpoint, with the weights)."""

    def __init__(self, net: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"train.ema={decay}", "is not a decay in (0, 1)", "use e.g. 0.999, or 0 to turn it off")
        self.decay = decay
        self.steps = 0
        self.network = copy.deepcopy(net).eval().requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.steps) / (10 + self.steps))

    @torch.no_grad()
    def update(self, net: torch.nn.Module) -> None:
        """Move the average towards ``net``'s weights; integer buffers (counters) are copied."""
        decay = self.current_decay()
        averaged, trained = self.network.state_dict(), net.state_dict()
        floats = [name for name, value in averaged.items() if value.is_floating_point()]
        torch._foreach_lerp_([averaged[k] for k in floats], [trained[k].detach() for k in floats], 1.0 - decay)
        for name, value in averaged.items():
            if not value.is_floating_point():
                value.copy_(trained[name])
        self.steps += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**self.network.state_dict(), "__steps__": torch.tensor(self.steps)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        self.steps = int(state.pop("__steps__"))
        self.network.load_state_dict(state)
