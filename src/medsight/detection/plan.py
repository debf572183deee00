"""Turn a detection fingerprint into a training plan that fits a time budget (nnU-Net's idea, for boxes).

:func:`make_detection_plan` decides, from :func:`medsight.detection.fingerprint.fingerprint_detection` and
the seconds one training image costs on this machine, what a new detection data set needs: the input size
(from the image sizes and the smallest boxes), the anchor sizes of each feature level (from the box sizes),
channels, normalisation, batch size, augmentation, the optimiser, the splits and the epochs that fit the
budget. Each decision is explained in ``notes``; whatever the budget forced is listed in ``gave_up``.

Rules (each stated again in the notes):

* **Input size.** Every image is fitted into one input, keeping its aspect ratio (padded, never squashed), so a
  box keeps its share of its image's extent. The start is the median image size, its long side capped (2D:
  ``MAX_SIDE`` px on a CPU; 3D: ``MAX_VOXELS``). The smallest boxes (the 5th percentile of each box's shorter
  side, as a share of its image, in the class where it is least) decide the rest: the input grows (to the cap)
  until they are at least ``MIN_BOX_PX`` pixels, and shrinks (to save time) while they stay at least
  ``COMFORT_BOX_PX``. Sides are multiples of ``DIVISOR`` (the feature pyramid's coarsest stride).
* **Anchors.** Along each axis, ``LEVELS`` sizes spaced geometrically from the ``LOW_Q`` quantile of the box
  extents (in the class where it is least) to the ``HIGH_Q`` quantile (in the class where it is most), scaled into
  the input: the levels span the boxes from small to large, and a rare class of small (or large) boxes counts as
  much as a common one.
* **Time model.** One epoch costs ``s * OVERHEAD * (n_train + n_val / 3)`` seconds, where ``s`` is the
  measured seconds of one training image (forward, losses, backward, optimiser) and validation is a forward
  pass (about a third of a step); ``USABLE`` of the budget goes to epochs. The estimate decides the input size;
  the epoch count is ``HEADROOM`` times what it fits, because the run's time limit (the budget), not the count,
  ends it, with the cosine schedule annealed by the time spent. On BCCD the estimate ran 1.47x high (72 s
  epochs against 106 s): planned at the estimate, the run ended with a third of its budget unused.

Example:
    >>> plan = make_detection_plan(fp, time_budget_min=60, seconds_per_image=lambda size, ch, b: 0.2,
    ...                            n_train=574, n_val=82, official_val=True)
    >>> plan.size, plan.anchor_sizes[0]  # doctest: +SKIP
    ([448, 384], [18.0, 17.0])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from medsight.errors import ConfigError
from medsight.result_files import read_record_json, write_record_json

#: ``seconds_per_image(size, channels, batch) -> seconds`` of one training image at that input
StepTimer = Callable[[list, int, int], float]

MAX_SIDE = {"cpu": 512, "cuda": 1024}
MAX_VOXELS = {"cpu": 96**3, "cuda": 192**3}
MIN_BOX_PX, COMFORT_BOX_PX = 8.0, 16.0
DIVISOR = {2: 32, 3: 16}
MIN_SIDE = {2: 64, 3: 32}
LEVELS = 4
LOW_Q, HIGH_Q = 0.05, 0.95
MIN_EPOCHS, MAX_EPOCHS = 10, 100
USABLE = 0.85
OVERHEAD = 1.25  # augmentation and batch assembly on top of the measured network step
HEADROOM = 1.5  # epochs planned beyond the estimate: the time limit, not the count, ends a budgeted run
BATCH_PIXELS = {2: 4 * 512 * 512, 3: 2 * 96**3}
MAX_BATCH = 16
PHOTO_LIKE = {"PHOTO", "XC", "GM", "SM", "ES", "OP"}
LR, WARMUP_EPOCHS = 3e-4, 1


class DetectionPlan(BaseModel):
    """Every decision the fingerprint and the budget made, with ``notes`` saying why (see the module)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    spatial_dims: int
    class_names: list[str]
    modality: str
    size: list[int]
    channels: int
    normalize: str
    anchor_sizes: list[list[float]]
    batch_size: int
    augment: dict[str, float]
    optimizer: str
    lr: float
    warmup_epochs: int
    early_stopping_metric: str
    official_val: bool
    test_fraction: float
    epochs: int
    time_budget_min: float
    time_limit_min: float
    seconds_per_image: float
    estimated_min: float
    n_train: int
    n_val: int
    smallest_box_px: float
    notes: dict[str, str]
    gave_up: list[str]

    def overrides(self) -> dict[str, Any]:
        """The plan as dotted :class:`~medsight.config.RunConfig` keys (``"preprocess.size"``, ...)."""
        return {
            "data.modality": self.modality,
            "data.test_fraction": self.test_fraction,
            "preprocess.size": list(self.size),
            "preprocess.keep_aspect": True,
            "preprocess.channels": self.channels,
            "preprocess.normalize": self.normalize,
            "detect.anchor_sizes": [list(a) for a in self.anchor_sizes],
            "train.batch_size": self.batch_size,
            "train.optimizer": self.optimizer,
            "train.lr": self.lr,
            "train.warmup_epochs": self.warmup_epochs,
            "train.epochs": self.epochs,
            "train.time_limit_min": self.time_limit_min,
            "train.anneal_to_time_limit": True,
            "train.early_stopping_metric": self.early_stopping_metric,
            **{f"augment.{k}": v for k, v in self.augment.items()},
        }


def make_detection_plan(fingerprint: dict, *, time_budget_min: float, seconds_per_image: StepTimer, n_train: int,
                        n_val: int, official_val: bool, modality: str | None = None,
                        device: str = "cpu") -> DetectionPlan:
    """Derive the plan from a fingerprint within ``time_budget_min`` minutes of training.

    Args:
        fingerprint: from :func:`~medsight.detection.fingerprint.fingerprint_detection`.
        time_budget_min: minutes of training.
        seconds_per_image: measures one training image at a candidate input size (:func:`detector_step_timer`).
        n_train, n_val: the training and validation images of the run's split.
        official_val: the data set has its own validation split (kept as it is).
        modality: the configured modality (``data.modality``); default: a stated guess from the colour.
        device: ``cpu`` or ``cuda``: the largest input the plan starts from.

    Raises:
        ConfigError: a budget that is not positive.
    """
    if time_budget_min <= 0:
        raise ConfigError("--time-budget", f"is {time_budget_min} minutes", "give a positive number of minutes")
    notes: dict[str, str] = {}
    gave_up: list[str] = []
    dims = int(fingerprint["spatial_dims"])
    kind = "cuda" if device.startswith("cuda") else "cpu"
    colour = bool(fingerprint["colour"]) and dims == 2
    modality = _modality(modality, colour, notes)
    size, smallest_share = _input_size(fingerprint, kind, notes)
    batch = _batch(size, n_train, notes)
    channels = 3 if colour else 1
    notes["channels"] = (f"{channels}: " + ("the images are colour (their channels differ)." if colour else
                         "grey, or grey stored as colour (R=G=B).") + f" Channels found: {fingerprint['channels']}.")
    notes["normalize"] = ("zscore: each image by its own mean and standard deviation, so exposure and stain "
                          "differences between images do not shift the features.")
    first = size
    size, epochs, seconds = _fit_budget(size, smallest_share, batch, channels, (n_train, n_val), time_budget_min,
                                        seconds_per_image, gave_up)
    if size != first:
        notes["size"] += f" The time budget then cut it to {size} (see gave_up)."
    anchors = _anchors(fingerprint, size, notes)
    epoch_s = seconds * OVERHEAD * (n_train + n_val / 3)
    fitted, epochs = epochs, min(MAX_EPOCHS, math.ceil(epochs * HEADROOM))
    notes["epochs"] = (
        f"{epochs}: {USABLE:.0%} of {time_budget_min:g} min over {n_train} training + {n_val} validation images at "
        f"{seconds * 1e3:.4g} ms per training image at {size} measured on this machine (x {OVERHEAD} for "
        f"augmentation; validation a third of a step): {epoch_s:.3g} s per epoch, {fitted} epochs; planned "
        f"{HEADROOM:g}x that, within {MIN_EPOCHS}..{MAX_EPOCHS}, as an upper bound: the time limit ends the run "
        "(the estimate has run up to 1.5x high), with the learning rate annealed by the time spent.")
    notes["time_limit_min"] = (f"{time_budget_min:g}: the budget itself; the cosine schedule follows the larger "
                               "of the epoch and the time progress, so a run the limit stops ends annealed.")
    notes["optimizer"] = (f"adamw, lr {LR:g} with {WARMUP_EPOCHS} warm-up epoch, cosine: a detector trained from "
                          "scratch on few images is unstable at the classifiers' 1e-3.")
    notes["early_stopping_metric"] = ("ap50: the best epoch is the one with the highest AP at IoU 0.5 on the "
                                      "validation images (the metric detection papers report; mAP@[.5:.95] "
                                      "rewards box tightness the small data sets cannot teach).")
    test_fraction = _splits(official_val, n_train, n_val, notes)
    return DetectionPlan(
        spatial_dims=dims, class_names=list(fingerprint["class_names"]), modality=modality, size=size,
        channels=channels, normalize="zscore", anchor_sizes=anchors, batch_size=batch,
        augment=_augmentation(modality, dims, notes), optimizer="adamw", lr=LR, warmup_epochs=WARMUP_EPOCHS,
        early_stopping_metric="ap50", official_val=official_val, test_fraction=test_fraction, epochs=epochs,
        time_budget_min=float(time_budget_min), time_limit_min=float(time_budget_min), seconds_per_image=seconds,
        estimated_min=round(min(epochs * epoch_s / 60 / USABLE, time_budget_min), 3), n_train=n_train, n_val=n_val,
        smallest_box_px=round(smallest_share * min(size), 2), notes=notes, gave_up=gave_up)


def write_detection_plan(plan: DetectionPlan, path: Path) -> None:
    """Write ``plan`` as indented JSON, whole or not at all."""
    write_record_json(path, plan)


def read_detection_plan(path: Path) -> DetectionPlan:
    """The plan in a ``plan.json`` written by :func:`write_detection_plan`.

    Raises:
        ConfigError: the file is missing, not JSON or not a detection plan.
    """
    return read_record_json(path, DetectionPlan, what="a detection plan",
                            fix="plan again: medsight plan DATA --task detection --out RUN")


def _modality(given: str | None, colour: bool, notes: dict[str, str]) -> str:
    if given:
        notes["modality"] = f"{given} (data.modality)."
        return given
    guess = "photo" if colour else "XR"
    notes["modality"] = (f"{guess} (guess: the images are {'colour' if colour else 'grey'}; set data.modality to "
                         "say what they are).")
    return guess


def _input_size(fp: dict, kind: str, notes: dict[str, str]) -> tuple[list[int], float]:
    """The median image fitted under the cap, then grown or shrunk for the smallest boxes (see the module)."""
    median = [float(v) for v in fp["sizes"]["median"]]
    dims = len(median)
    if dims == 2:
        cap_scale, cap = MAX_SIDE[kind] / max(median), f"long side at most {MAX_SIDE[kind]} px on {kind}"
    else:
        cap_scale, cap = (MAX_VOXELS[kind] / math.prod(median)) ** (1 / 3), f"at most {MAX_VOXELS[kind]:,} voxels"
    smallest = _smallest_share(fp)
    scale = min(1.0, cap_scale)
    short = min(median)
    grow = MIN_BOX_PX / (smallest * short * scale) if smallest > 0 else 1.0
    shrink = COMFORT_BOX_PX / (smallest * short * scale) if smallest > 0 else 1.0
    why = "the median image fits"
    if grow > 1.0:
        scale, why = min(cap_scale, scale * grow), f"grown so the smallest boxes reach {MIN_BOX_PX:g} px"
    elif shrink < 1.0:
        scale, why = scale * shrink, f"shrunk while the smallest boxes keep {COMFORT_BOX_PX:g} px (faster steps)"
    size = _rounded([v * scale for v in median], dims)
    px = smallest * min(size)
    notes["size"] = (
        f"{size}: the median image {[round(v) for v in median]} ({cap}), {why}: the smallest boxes (5th percentile "
        f"of each box's shorter side in the class where it is least, {smallest:.3g} of its image) are about "
        f"{px:.3g} px in the input; every image is fitted in keeping its aspect ratio (padded, never squashed); "
        f"sides in multiples of {DIVISOR[dims]}.")
    if px < MIN_BOX_PX:
        notes["size"] += (f" They stay below {MIN_BOX_PX:g} px at the cap: the smallest lesions may be missed "
                          "(a GPU plans a larger input).")
    return size, smallest


def _smallest_share(fp: dict) -> float:
    """The 5th percentile of the boxes' shorter side as a share of their image, of the class where it is least
    (a rare class of small boxes counts as much as a common one of large boxes)."""
    per_class = [v["smallest_side_share"][1] for k, v in fp["boxes"].items()
                 if k != "all" and "smallest_side_share" in v]
    return float(min(per_class or [fp["boxes"]["all"]["smallest_side_share"][1]]))


def _rounded(values: list[float], dims: int) -> list[int]:
    step = DIVISOR[dims]
    return [max(MIN_SIDE[dims], int(round(v / step)) * step) for v in values]


def _anchors(fp: dict, size: list[int], notes: dict[str, str]) -> list[list[float]]:
    """Along each axis, ``LEVELS`` sizes spaced geometrically from the smallest class's 5th percentile of the box
    extents to the largest class's 95th, scaled into the input (see the module)."""
    grid = fp["boxes"]["all"]["quantiles"]
    classes = [v for k, v in fp["boxes"].items() if k != "all" and "quantiles_share" in v] or [fp["boxes"]["all"]]
    anchors = [[0.0] * len(size) for _ in range(LEVELS)]
    for axis in range(len(size)):
        low = max(4.0, min(_interp(LOW_Q, grid, c["quantiles_share"][axis]) for c in classes) * size[axis])
        high = max(low, max(_interp(HIGH_Q, grid, c["quantiles_share"][axis]) for c in classes) * size[axis])
        for level in range(LEVELS):
            anchors[level][axis] = round(low * (high / low) ** (level / (LEVELS - 1)), 1)
    shown = "; ".join(f"level {i}: {a}" for i, a in enumerate(anchors))
    notes["anchor_sizes"] = (
        f"{shown} px: along each axis, {LEVELS} sizes spaced geometrically (like the feature levels' strides) from "
        f"the {LOW_Q:.0%} quantile of the box extents in the class where it is least to the {HIGH_Q:.0%} quantile in "
        f"the class where it is most, scaled into the {size} input (each box by its own image's scale), so a rare "
        "class of small or large boxes gets its anchors too; the aspect ratios (detect.aspect_ratios) vary each "
        "level's shape.")
    return anchors


def _interp(q: float, grid: list[float], values: list[float]) -> float:
    return float(np.interp(q, grid, values))


def _batch(size: list[int], n_train: int, notes: dict[str, str]) -> int:
    dims = len(size)
    by_pixels = 2 ** int(math.log2(max(1.0, BATCH_PIXELS[dims] / math.prod(size))))
    by_data = 2 ** int(math.log2(max(2, n_train // 4)))
    batch = max(2, min(MAX_BATCH, by_pixels, by_data))
    notes["batch_size"] = (f"{batch}: the largest power of two up to {BATCH_PIXELS[dims]:,} input pixels per batch, "
                           f"at most a quarter of the {n_train} training images, 2..{MAX_BATCH}.")
    return batch


def _augmentation(modality: str, dims: int, notes: dict[str, str]) -> dict[str, float]:
    augment: dict[str, float] = {"flip_h": 0.5, "rotate_deg": 10.0, "scale": 0.1, "shift": 0.05,
                                 "contrast": 0.1, "brightness": 0.1}
    said = ("the boxes move with the image: left-right flips (p 0.5), rotations up to 10 deg (each box re-fitted "
            "around its turned corners), scale 10%, shift 5%; contrast and brightness 10%")
    if modality.upper() in PHOTO_LIKE or modality.lower() == "photo" or dims == 3:
        augment["flip_v"] = 0.5
        said += "; up-down flips too (photographs and microscopy have no up; volumes flip along every axis)"
    else:
        said += "; no up-down flip (anatomy has an up)"
    notes["augment"] = said + "."
    return augment


def _splits(official_val: bool, n_train: int, n_val: int, notes: dict[str, str]) -> float:
    if official_val:
        notes["splits"] = (f"the data set's own splits: train on its {n_train} training images, validate on its "
                           f"{n_val} validation images; no test split is carved out of train "
                           "(data.test_fraction 0). The validation images choose the epoch and the score threshold, "
                           "so their scores are slightly optimistic: evaluate on held-out data with medsight evaluate.")
        return 0.0
    notes["splits"] = (f"no validation split in the data: {n_val} validation images carved out of the training "
                       "images (data.val_fraction), and a test split (data.test_fraction) kept for medsight evaluate.")
    return 0.15


def _fit_budget(size, smallest_share, batch, channels, counts, budget_min, timer: StepTimer, gave_up: list[str]):
    """Measure the input size and shrink it (x 0.75, the smallest boxes kept at MIN_BOX_PX) until MIN_EPOCHS fit."""
    n_train, n_val = counts
    dims = len(size)
    while True:
        seconds = float(timer(list(size), channels, batch))
        epoch_s = seconds * OVERHEAD * (n_train + n_val / 3)
        epochs = int(budget_min * 60 * USABLE // epoch_s) if epoch_s > 0 else MAX_EPOCHS
        if epochs >= MIN_EPOCHS:
            return size, min(epochs, MAX_EPOCHS), seconds
        smaller = _rounded([v * 0.75 for v in size], dims)
        if smaller == size or smallest_share * min(smaller) < MIN_BOX_PX:
            gave_up.append(f"epochs: {epochs} fit {budget_min:g} min even at the smallest input that keeps the "
                           f"smallest boxes at {MIN_BOX_PX:g} px (the plan wants {MIN_EPOCHS}); it trains "
                           f"{max(1, epochs)}: raise --time-budget for a better model")
            return size, max(1, epochs), seconds
        gave_up.append(f"input size {size} -> {smaller} to fit {budget_min:g} min ({epochs} epochs fitted, the plan "
                       f"wants {MIN_EPOCHS})")
        size = smaller
