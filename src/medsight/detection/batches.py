"""Detection images held in memory at the input size, the batches the training loop reads, and validation.

Each image is decoded and brought to the detector's input once (:func:`load_box_set`, through
:func:`~medsight.transforms.box_geometry.fit_sample`, the very function prediction uses), with its boxes moved
along. Every epoch then draws a seeded order, augments each image with its boxes
(:func:`~medsight.transforms.box_augment.augment_with_boxes`) and pads the boxes into one target tensor
(:func:`~medsight.detection.heads.pad_targets`): no DataLoader, no worker processes, no decoding per epoch.

Example:
    >>> data, bad = load_box_set(dataset, cases, cfg.preprocess, progress=False)
    >>> batches = BoxBatches(data, cfg.train, cfg.augment)
    >>> images, targets = next(iter(batches.epoch(1, 0)))
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medsight.boxes import Boxes
from medsight.config import AugmentConfig, PreprocessConfig, TrainConfig
from medsight.data.file_errors import one_line
from medsight.detection.heads import Anchors, decode, pad_targets
from medsight.errors import MedsightError
from medsight.progress import track


@dataclass
class BoxSet:
    """A split at the input size: ``images`` ``(N, C, *size)`` float32, each image's ``boxes`` in the input's
    pixels, the case ``ids`` and the cases themselves."""

    images: torch.Tensor
    boxes: list[Boxes]
    ids: list[str]
    cases: list[Any]

    def __len__(self) -> int:
        return len(self.ids)


def load_box_set(dataset, cases: Sequence, cfg: PreprocessConfig, *, progress: bool = True, desc: str = "reading",
                 on_bad_file: str = "error") -> tuple[BoxSet, list[dict[str, str]]]:
    """Decode ``cases`` of ``dataset`` and fit each to the input with its boxes.

    Returns:
        ``(the set, the skipped files as {"path", "reason"})``; with ``on_bad_file="error"`` the first
        unreadable file raises instead.

    Raises:
        MedsightError: an unreadable file (``on_bad_file="error"``), naming it.
    """
    from medsight.transforms.box_geometry import fit_sample

    images, boxes, kept, bad = [], [], [], []
    for case in track(list(cases), description=desc, enabled=progress):
        try:
            image, moved, _ = fit_sample(dataset.read(case), cfg, case.boxes)
        except MedsightError as err:
            if on_bad_file == "error":
                raise
            bad.append({"path": str(case.path), "reason": one_line(err)})
            continue
        images.append(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)))
        boxes.append(moved)
        kept.append(case)
    shape = (0, cfg.channels, *cfg.size)
    stacked = torch.stack(images) if images else torch.zeros(shape)
    return BoxSet(stacked, boxes, [c.id for c in kept], kept), bad


class BoxBatches:
    """An epoch of shuffled batches of ``data``, each image augmented with its boxes.

    Every epoch seeds its own generators and the global torch RNG (the detector's negative sampling) from
    ``(cfg.seed, epoch)``, so nothing random needs checkpointing; a cut epoch draws its first ``skip`` batches
    again, without training on them, to go on with the same streams.
    """

    def __init__(self, data: BoxSet, cfg: TrainConfig, augment: AugmentConfig) -> None:
        self.data, self.seed, self.augment = data, cfg.seed, augment
        self.batch = min(cfg.batch_size, len(data))
        self.steps = max(1, len(data) // self.batch)
        self.items = self.batch
        self.dims = data.images.dim() - 2
        self.augmenting = any(bool(v) for v in augment.model_dump().values())

    def epoch(self, epoch: int, skip: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        data_seed, global_seed = np.random.SeedSequence([self.seed % 2**63, epoch]).generate_state(2, np.uint64)
        if skip == 0:  # a cut epoch continued keeps the global RNG as the checkpoint restored it
            torch.manual_seed(int(global_seed))
        rng = np.random.default_rng(int(data_seed))
        order = rng.permutation(len(self.data))
        for step in range(self.steps):
            index = order[step * self.batch:(step + 1) * self.batch]
            images, boxes = self._augmented(index, rng)
            if step >= skip:
                yield images, pad_targets(boxes, self.dims)

    def _augmented(self, index: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, list[Boxes]]:
        if not self.augmenting:
            return self.data.images[torch.from_numpy(index)], [self.data.boxes[i] for i in index]
        from medsight.transforms.box_augment import augment_with_boxes

        images, boxes = [], []
        for i in index:
            image, moved = augment_with_boxes(self.data.images[i].numpy(), self.data.boxes[i], self.augment, rng)
            images.append(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)))
            boxes.append(moved)
        return torch.stack(images), boxes

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore: each epoch seeds its own streams."""


def predict_set(detector, network: torch.nn.Module, data: BoxSet, anchors: Anchors, device: torch.device, *,
                batch: int = 8) -> list[Boxes]:
    """The network's scored boxes for every image of ``data``, in the input's pixels (the detector's
    post-processing: score floor, NMS, boxes kept)."""
    was_training = network.training
    network.eval()
    spatial = list(data.images.shape[2:])
    out: list[Boxes] = []
    with torch.no_grad():
        for start in range(0, len(data), batch):
            outputs = network(data.images[start:start + batch].to(device))
            out.extend(decode(detector, outputs.float(), anchors, spatial))
    network.train(was_training)
    return out
