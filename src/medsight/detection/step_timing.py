"""How long one detection training image takes on this machine: the detection plan's measure of its budget.

:func:`detector_step_timer` returns the ``seconds_per_image(size, channels, batch)`` callable
:func:`medsight.detection.plan.make_detection_plan` asks for each candidate input size: it builds the detector
(:func:`medsight.models.detectors.build_detector`, default anchors), runs one warm-up and a few timed training
steps (forward, the detector's losses with one box per image, backward, AdamW) on random images, on the device
and threads training will use, and divides the median step by the batch.

Example:
    >>> timer = detector_step_timer("cpu", class_names=["lesion"])
    >>> timer([256, 256], 1, 4)  # doctest: +SKIP
    0.11
"""

from __future__ import annotations

from medsight.boxes import Boxes
from medsight.detection.plan import StepTimer
from medsight.training.step_seconds import median_step_seconds

#: timed steps after one warm-up
STEPS = 2


def detector_step_timer(device: str = "auto", *, class_names: list[str], steps: int = STEPS) -> StepTimer:
    """A ``seconds_per_image(size, channels, batch)`` that times ``steps`` detector training steps."""

    def seconds_per_image(size: list, channels: int, batch: int) -> float:
        import torch

        from medsight.config import DetectConfig
        from medsight.detection.heads import DetectorLoss, FlatHeads, anchors_for, pad_targets
        from medsight.models.detectors import build_detector
        from medsight.runtime.device import pick_device

        where = pick_device(device)
        torch.manual_seed(0)
        detector = build_detector(len(size), channels, class_names, DetectConfig())
        net = FlatHeads(detector).to(where)
        loss = DetectorLoss(detector, anchors_for(detector, [channels, *size]))
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
        images = torch.randn((batch, channels, *size), generator=torch.Generator().manual_seed(0)).to(where)
        box = [s / 4 for s in size] + [s / 2 for s in size]
        targets = pad_targets([Boxes([box], [0])] * batch, len(size)).to(where)
        net.train()

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            loss(net(images).float(), targets).backward()
            optimizer.step()

        return median_step_seconds(step, steps=steps, device=where) / batch

    return seconds_per_image
