"""The plain reference of bench/detection.py: MONAI's RetinaNet trained by a plain PyTorch loop, for throughput.

The network is MONAI's ``RetinaNet`` at MONAI's usual settings: a ResNet-18 body, a 256-channel feature pyramid
over its layers 1-2 plus a max-pooled level (MONAI's LUNA16 tutorial feeds layers 1-2), 3 anchors per position
(MONAI's default 32-pixel base anchors at ratios 0.5, 1, 2 scaled 1, 2, 4 per level), MONAI's
``RetinaNetDetector`` losses with its ATSS matcher and hard-negative sampler, SGD lr 0.01 momentum 0.9, no
augmentation. Two pieces MONAI builds with torchvision (the ResNet-FPN extractor and the matcher's input check)
come from medsight's ``models/monai_detection.py``, as medsight's own detector uses them: there is no CPU build of
torchvision. The images are the same ones medsight trains on, fitted to the same input size once, in memory.

Only the training throughput is measured (images per second over ``seconds`` after one warm-up step); the
reference is not trained to convergence.
"""

from __future__ import annotations

import time

import torch


def reference_throughput(images: torch.Tensor, boxes: list, labels: list, *, num_classes: int, batch_size: int,
                         seconds: float = 90.0, seed: int = 0) -> dict:
    """Train MONAI's plain RetinaNet on ``images`` ``(N, C, H, W)`` (``boxes``: per image ``(n, 4)`` tensors in the
    input's index order) for about ``seconds``; returns ``{"images_per_s", "steps", "seconds"}``."""
    from monai.apps.detection.networks.retinanet_network import RetinaNet
    from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
    from monai.networks.nets import resnet

    from medsight.models.monai_detection import ATSSRetinaNetDetector, ResNetFPN

    torch.manual_seed(seed)
    body = resnet.resnet18(spatial_dims=2, n_input_channels=images.shape[1], conv1_t_size=7, conv1_t_stride=2)
    network = RetinaNet(spatial_dims=2, num_classes=num_classes, num_anchors=3,
                        feature_extractor=ResNetFPN(body, [1, 2], 256, 2), size_divisible=16)
    anchors = AnchorGeneratorWithAnchorShape(feature_map_scales=[1, 2, 4],
                                             base_anchor_shapes=[[32 * 0.707, 32 / 0.707], [32, 32],
                                                                 [32 / 0.707, 32 * 0.707]])
    detector = ATSSRetinaNetDetector(network, anchors)
    detector.set_atss_matcher(num_candidates=4, center_in_gt=False)
    detector.set_hard_negative_sampler(batch_size_per_image=64, positive_fraction=0.3, min_neg=16, pool_size=20)
    detector.train()
    optimizer = torch.optim.SGD(detector.network.parameters(), lr=0.01, momentum=0.9, weight_decay=3e-5)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    steps, seen, start, at = 0, 0, None, 0
    while start is None or time.perf_counter() - start < seconds:
        idx = order[torch.arange(at, at + batch_size) % len(order)]
        at += batch_size
        targets = [{"boxes": boxes[i].float(), "labels": labels[i].long()} for i in idx.tolist()]
        losses = detector(images[idx], targets)
        loss = losses["classification"] + losses["box_regression"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if start is None:  # the first step warms up (allocations, threads); time from the second
            start = time.perf_counter()
            continue
        steps, seen = steps + 1, seen + len(idx)
    elapsed = time.perf_counter() - start
    return {"images_per_s": seen / elapsed, "steps": steps, "seconds": round(elapsed, 1)}
