"""How long one training image takes on this machine: the plan's measure of its time budget.

:func:`step_timer` returns the ``seconds_per_image`` callable
:func:`medsight.classification.plan.make_classification_plan` asks for each candidate network: it builds the
network, runs one warm-up and a few timed training steps (forward, cross-entropy, backward, AdamW) on random
tensors of the candidate's batch and input size, on the device and threads training will use, and divides the
median step by the batch (the median, so one step slowed by another process does not decide).

Example:
    >>> timer = step_timer("cpu")
    >>> timer("compact_cnn", {"width": 32}, [28, 28], 1, 64)  # doctest: +SKIP
    0.0006
"""

from __future__ import annotations

from medsight.classification.plan import StepTimer
from medsight.training.step_seconds import median_step_seconds

#: timed steps after one warm-up
STEPS = 3


def step_timer(device: str = "auto", *, steps: int = STEPS) -> StepTimer:
    """A ``seconds_per_image(name, kwargs, size, channels, batch)`` that times ``steps`` training steps."""

    def seconds_per_image(name: str, kwargs: dict, size: list, channels: int, batch: int) -> float:
        import torch
        import torch.nn.functional as F

        from medsight.models import create_model
        from medsight.runtime.device import pick_device, to_device

        where = pick_device(device)
        generator = torch.Generator().manual_seed(0)
        model = create_model(name, in_channels=channels, num_outputs=2, spatial_dims=len(size), **kwargs).to(where)
        if len(size) == 2:
            model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        images = to_device(torch.randn((batch, channels, *size), generator=generator), where)
        labels = torch.randint(0, 2, (batch,), generator=generator).to(where)
        model.train()

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()

        return median_step_seconds(step, steps=steps, device=where) / batch

    return seconds_per_image
