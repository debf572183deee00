"""Turn a classification fingerprint into a training plan that fits a time budget (nnU-Net's idea, for
classification).

:func:`make_classification_plan` decides, from :func:`medsight.classification.fingerprint.fingerprint_images`
and the seconds one training image costs on this machine, every setting a new data set needs: input size
(padded to keep the aspect ratio, never squashed), normalisation by modality, channels, network and width,
batch size, augmentation, class weights, cross-validation, test-time augmentation, the number of epochs that
lets every fold finish within the budget and, with time left over, seeded members per fold. Each decision is
explained in ``notes``; whatever the budget forced (a smaller input, a narrower network, fewer folds or epochs)
is listed in ``gave_up``.

Time model (stated in the notes): one epoch of a fold costs ``s * OVERHEAD * (n_train + n_val / 3)`` seconds,
where ``s`` is the measured seconds of one training image's forward and backward pass and validation is a
forward pass (about a third of a step); every fold runs the same epochs, and ``USABLE`` of the budget goes to
epochs (the rest reads the images, calibrates and writes reports). Members per fold are planned last, from whole
k-fold passes of those epochs that fit the budget, so a short budget drops them before anything else.

Example:
    >>> plan = make_classification_plan(fp, time_budget_min=10, seconds_per_image=lambda *a: 1e-3)
    >>> plan.overrides()["preprocess.normalize"], plan.notes["normalize"][:47]
    ('zscore', 'zscore: XR: each image by its own mean and stan')
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from medsight.errors import ConfigError
from medsight.result_files import read_record_json, write_record_json

#: ``seconds_per_image(network name, kwargs, size, channels, batch) -> seconds`` of one training image
StepTimer = Callable[[str, dict, list, int, int], float]

MIN_EPOCHS, MAX_EPOCHS = 15, 60
USABLE = 0.8
OVERHEAD = 1.25  # augmentation and batch assembly on top of the measured network step
MAX_SIDE = {"cpu": 128, "cuda": 256}
MAX_VOXELS = {"cpu": 48**3, "cuda": 128**3}
MIN_SIDE = {2: 32, 3: 16}
CV_BELOW = 20_000
FOLDS = 5
IMBALANCE = 3.0
BATCH_PIXELS = 64 * 64 * 64  # a batch of 64 images of 64 x 64 pixels
XR_LIKE = {"XR", "CR", "DX", "MG", "RF", "XA", "IO", "PX", "US", "OT", "SC"}
PHOTO_LIKE = {"PHOTO", "XC", "GM", "SM", "ES", "OP"}
#: the compact CNN's widths the plan steps down through when the budget is short
WIDTHS = (48, 32, 16, 8)
#: the most seeded members per fold the plan trains
MAX_MEMBERS = 4


class ClassificationPlan(BaseModel):
    """Every decision the fingerprint and the budget made, with ``notes`` saying why (see the module)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    modality: str
    spatial_dims: int
    size: list[int]
    keep_aspect: bool
    channels: int
    normalize: str
    intensity_clip: list[float] | None = None
    intensity_mean: float | None = None
    intensity_std: float | None = None
    model_name: str
    model_kwargs: dict[str, Any]
    batch_size: int
    augment: dict[str, float]
    class_weights: str
    folds: int
    members_per_fold: int = 1
    tta: str
    epochs: int
    time_budget_min: float
    time_limit_min: float
    seconds_per_image: float
    estimated_min: float
    n_train_per_fold: int
    notes: dict[str, str]
    gave_up: list[str]

    def overrides(self) -> dict[str, Any]:
        """The plan as dotted :class:`~medsight.config.RunConfig` keys (``"preprocess.size"``, ...)."""
        keys: dict[str, Any] = {
            "data.modality": self.modality,
            "data.folds": self.folds,
            **({"data.test_fraction": 0.0} if self.folds > 1 else {}),
            "preprocess.size": list(self.size),
            "preprocess.keep_aspect": self.keep_aspect,
            "preprocess.channels": self.channels,
            "preprocess.normalize": self.normalize,
            "model.name": self.model_name,
            "model.kwargs": dict(self.model_kwargs),
            "train.batch_size": self.batch_size,
            "train.class_weights": self.class_weights,
            "train.epochs": self.epochs,
            "train.members_per_fold": self.members_per_fold,
            "train.time_limit_min": self.time_limit_min,
            "train.anneal_to_time_limit": False,
            "eval.tta": self.tta,
            **{f"augment.{k}": v for k, v in self.augment.items()},
        }
        if self.normalize == "dataset":
            keys.update({"preprocess.intensity_clip": list(self.intensity_clip or []),
                         "preprocess.intensity_mean": self.intensity_mean,
                         "preprocess.intensity_std": self.intensity_std})
        return keys


def make_classification_plan(
    fingerprint: dict, *, time_budget_min: float, seconds_per_image: StepTimer, n_pool: int | None = None,
    min_class_members: int | None = None, device: str = "cpu",
) -> ClassificationPlan:
    """Derive the plan from a fingerprint within ``time_budget_min`` minutes of training.

    Args:
        fingerprint: from :func:`~medsight.classification.fingerprint.fingerprint_images`.
        time_budget_min: minutes for training every fold.
        seconds_per_image: measures one training image of a candidate network (:func:`step_timer`).
        n_pool: images that training and validation share (the cross-validation pool: everything but the
            test split); default: 85% of the images (the default test fraction left out).
        min_class_members: the smallest class's patients (images without patient ids) in that pool, which
            bounds the number of folds; default: from the fingerprint's class counts.
        device: ``cpu`` or ``cuda``: the largest input the plan starts from.

    Raises:
        ConfigError: a budget that is not positive, or a fingerprint without images.
    """
    if time_budget_min <= 0:
        raise ConfigError("--time-budget", f"is {time_budget_min} minutes", "give a positive number of minutes")
    n_images = int(fingerprint["n_images"])
    if not n_images:
        raise ConfigError("fingerprint", "has no images", "fingerprint a data set with images")
    notes: dict[str, str] = {}
    gave_up: list[str] = []
    modality = str(fingerprint["modality"]["value"])
    notes["modality"] = f"{modality} ({fingerprint['modality']['source']}: {fingerprint['modality']['reason']})."
    pool = int(n_pool if n_pool is not None else round(0.85 * n_images))
    smallest = min_class_members if min_class_members is not None else min(fingerprint["class_counts"].values())
    folds = _folds(n_images, smallest, notes)
    size, keep_aspect = _input_size(fingerprint, device, notes)
    network = _network(fingerprint, size, notes)
    settings = {"channels": _channels(fingerprint, notes), **_normalisation(fingerprint, modality, notes),
                "augment": _augmentation(modality, notes), "class_weights": _class_weights(fingerprint, notes)}
    fit = _fit_budget(size, network, folds, pool, settings["channels"], time_budget_min, seconds_per_image,
                      gave_up)
    _say_budget_changes(notes, (size, network, folds), fit[:3])
    size, network, folds, epochs, seconds, batch = fit
    n_train, n_val = _fold_sizes(pool, folds)
    epoch_s = seconds * OVERHEAD * (n_train + n_val / 3)
    notes["batch_size"] = (f"{batch}: the largest power of two up to {BATCH_PIXELS:,} pixels per batch "
                           f"(64 images of 64 x 64), at most a quarter of the {n_train} training images, 2..128.")
    notes["epochs"] = (
        f"{epochs}: {USABLE:.0%} of {time_budget_min:g} min over {folds} fold(s) of {n_train} training + {n_val} "
        f"validation images at {seconds * 1e3:.3g} ms per training image measured on this machine "
        f"(x {OVERHEAD} for augmentation; validation a third of a step): {epoch_s:.3g} s per epoch, "
        f"kept within {MIN_EPOCHS}..{MAX_EPOCHS}. The schedule follows the epochs, not the clock "
        "(train.anneal_to_time_limit false), so a run repeats exactly on any machine.")
    tta = "auto" if settings["augment"].get("flip_h") or settings["augment"].get("flip_v") else "none"
    notes["tta"] = (f"{tta}: the augmentation flips, so test-time flips may pay; auto keeps them only where the "
                    "out-of-fold predictions say so." if tta == "auto" else "none: the augmentation does not flip.")
    members = _members(folds, folds * epochs * epoch_s / 60 / USABLE, time_budget_min, notes)
    limit = round(time_budget_min / (folds * members) * 1.5, 3)
    notes["time_limit_min"] = (f"{limit:g} per member: its share of the budget ({time_budget_min:g} min / ({folds} "
                               f"fold(s) x {members} member(s))) x 1.5, a safety net the epochs stay under.")
    return ClassificationPlan(
        modality=modality, spatial_dims=len(size), size=size, keep_aspect=keep_aspect, model_name=network[0],
        model_kwargs=network[1], batch_size=batch, folds=folds, members_per_fold=members, tta=tta, epochs=epochs,
        time_budget_min=float(time_budget_min), time_limit_min=limit, seconds_per_image=seconds,
        estimated_min=round(members * folds * epochs * epoch_s / 60 / USABLE, 3), n_train_per_fold=n_train,
        notes=notes, gave_up=gave_up, **settings)


def write_classification_plan(plan: ClassificationPlan, path: Path) -> None:
    """Write ``plan`` as indented JSON, whole or not at all."""
    write_record_json(path, plan)


def read_classification_plan(path: Path) -> ClassificationPlan:
    """The plan in a ``plan.json`` written by :func:`write_classification_plan`.

    Raises:
        ConfigError: the file is missing, not JSON or not a classification plan.
    """
    return read_record_json(path, ClassificationPlan, what="a classification plan",
                            fix="plan again: medsight plan DATA --task classification --out RUN")


def _folds(n_images: int, smallest: int, notes: dict[str, str]) -> int:
    if n_images >= CV_BELOW:
        notes["folds"] = f"1: {n_images:,} images, at least {CV_BELOW:,}: one train/validation split is enough."
        return 1
    folds = min(FOLDS, smallest)
    if folds < 2:
        notes["folds"] = (f"1: below {CV_BELOW:,} images the plan cross-validates, but the smallest class has "
                          f"{smallest} image(s) (patients) to share out: one train/validation split.")
        return 1
    why = "" if folds == FOLDS else f" (not {FOLDS}: the smallest class has {smallest} images or patients)"
    notes["folds"] = (f"{folds}{why}: below {CV_BELOW:,} images one validation split is too small to choose "
                      "the epoch, threshold and temperature on, so every image is validated once, out of fold. No "
                      "test split is carved out (data.test_fraction 0): the out-of-fold predictions are the estimate "
                      "on unseen cases; an official test split is kept and never touched.")
    return folds


def _members(folds: int, pass_min: float, budget_min: float, notes: dict[str, str]) -> int:
    """Seeded members per fold: the whole k-fold passes (``pass_min`` each) the budget holds, 1..MAX_MEMBERS."""
    if folds == 1:
        notes["members_per_fold"] = "1: one train/validation split; members per fold are for a cross-validation."
        return 1
    passes = int(budget_min // pass_min) if pass_min > 0 else MAX_MEMBERS
    members = max(1, min(MAX_MEMBERS, passes))
    notes["members_per_fold"] = (
        f"{members}: {passes} whole pass(es) of the {folds} folds ({pass_min:.3g} min each) fit {budget_min:g} min, "
        f"at most {MAX_MEMBERS}; members are planned last, so a short budget keeps 1. Fold k trains them with seeds "
        f"seed .. seed + {members - 1} on its same cases; a case's out-of-fold prediction averages its fold's "
        "members' probabilities and RUN/model holds all of them. Why: on small data one run's result varies with "
        "its seed, and averaging members lowers that variance (BreastMNIST, 5 folds: out-of-fold AUC 0.899, 0.876, "
        "0.859, 0.874 for seeds 0-3, 0.909 for the four averaged per fold).")
    return members


def _input_size(fp: dict, device: str, notes: dict[str, str]) -> tuple[list[int], bool]:
    """The median shape, shrunk (keeping its aspect ratio) to the device's cap, in multiples of 4."""
    median = [float(v) for v in fp["sizes"]["median"]]
    dims = len(median)
    key = "cuda" if device.startswith("cuda") else "cpu"
    if dims == 2:
        scale, cap = min(1.0, MAX_SIDE[key] / max(median)), f"longest side at most {MAX_SIDE[key]} px on {key}"
    else:
        scale, cap = min(1.0, (MAX_VOXELS[key] / math.prod(median)) ** (1 / 3)), (
            f"at most {MAX_VOXELS[key]:,} voxels on {key}")
    size = [max(8, _round4(v * scale)) for v in median]
    notes["size"] = f"{size}: the median image {[round(v) for v in median]} ({cap}), in multiples of 4."
    aspect = fp["aspect_ratio"]
    keep = aspect["max"] / aspect["min"] > 1.02 or abs(aspect["median"] - size[-1] / size[-2]) > 0.02
    notes["keep_aspect"] = (
        f"true: aspect ratios (width / height) run from {aspect['min']:.3g} to {aspect['max']:.3g}, so each image "
        "is padded to the input's aspect ratio (centred, with its smallest value) instead of squashed."
        if keep else f"false: every image has the input's aspect ratio ({aspect['median']:.3g}); nothing to pad.")
    return size, keep


def _say_budget_changes(notes: dict[str, str], first: tuple, final: tuple) -> None:
    """Append to the size, network and folds notes what the budget changed them to."""
    for key, before, after in zip(("size", "network", "folds"), first, final, strict=True):
        if before != after:
            shown = f"{after[0]} {after[1]}" if key == "network" else after
            notes[key] += f" The time budget then cut it to {shown} (see gave_up)."


def _round4(value: float) -> int:
    return max(4, int(round(value / 4.0)) * 4)


def _channels(fp: dict, notes: dict[str, str]) -> int:
    """3 when the images are really colour, else 1; mixed channel counts are stated."""
    found = ", ".join(f"{k}: {n}" for k, n in sorted(fp["channels"].items(), key=lambda kv: int(kv[0])))
    channels = 3 if fp["colour"] else 1
    what = ("the images are colour (their channels differ) -> 3 channels" if fp["colour"] else
            "grey (1 channel), or grey stored as colour (R=G=B) -> 1 channel")
    mixed = "mixed channel counts " if len(fp["channels"]) > 1 else "channel counts "
    notes["channels"] = f"{channels}: {mixed}({found}); {what}."
    return channels


def _normalisation(fp: dict, modality: str, notes: dict[str, str]) -> dict[str, Any]:
    """nnU-Net's rule: CT by the data set's HU (clip, one global z-score); everything else per image."""
    stats = fp["intensity"]
    if modality.upper() == "CT":
        clip = [stats["p00_5"], stats["p99_5"]]
        notes["normalize"] = (
            f"dataset: CT, whose {stats['unit']} carry meaning across images: clip to {stats['region']}'s 0.5 / "
            f"99.5 percentiles [{clip[0]:.4g}, {clip[1]:.4g}], then one z-score for every image with its mean "
            f"{stats['mean']:.4g} and standard deviation {stats['std']:.4g} (nnU-Net's CT normalisation).")
        return {"normalize": "dataset", "intensity_clip": clip, "intensity_mean": stats["mean"],
                "intensity_std": max(float(stats["std"]), 1e-6)}
    why = ("MR intensities have no fixed unit: each image by its own mean and standard deviation."
           if modality.upper() == "MR" else
           f"{modality}: each image by its own mean and standard deviation; a z-score rather than min-max, so one "
           "bright marker, label or burned-in text does not squeeze the anatomy into a few grey levels.")
    notes["normalize"] = f"zscore: {why}"
    return {"normalize": "zscore"}


def _augmentation(modality: str, notes: dict[str, str]) -> dict[str, float]:
    kind = modality.upper()
    augment: dict[str, float] = {"flip_h": 0.5, "rotate_deg": 10.0, "scale": 0.1, "shift": 0.05}
    said = ("geometric for every modality: left-right flips (p 0.5; findings rarely depend on the side), "
            "rotation 10 deg, scale 10%, shift 5%")
    if kind in PHOTO_LIKE:
        augment.update(flip_v=0.5, color=0.1, brightness=0.1, contrast=0.1)
        said += "; photographs have no up: up-down flips too; colour, brightness and contrast jitter 10%"
    elif kind == "CT":
        said += "; no intensity change: CT's Hounsfield units carry the meaning; no up-down flip (anatomy has an up)"
    else:
        augment.update(contrast=0.1, gamma=0.1)
        said += "; contrast and gamma 10% (their grey levels are relative); no up-down flip (anatomy has an up)"
    notes["augment"] = said + "."
    return augment


def _class_weights(fp: dict, notes: dict[str, str]) -> str:
    counts = fp["class_counts"]
    ratio = max(counts.values()) / max(1, min(counts.values()))
    if ratio > IMBALANCE:
        notes["class_weights"] = (f"balanced: the largest class has {ratio:.3g} x the smallest's images (above "
                                  f"{IMBALANCE:g}), so each class weighs by the inverse of its frequency.")
        return "balanced"
    notes["class_weights"] = (f"none: classes within {IMBALANCE:g}:1 ({ratio:.3g}); the operating threshold chosen "
                              "on validation handles the rest.")
    return "none"


def _network(fp: dict, size: list[int], notes: dict[str, str]) -> tuple[str, dict]:
    """ResNet-18 for many large images; else the compact CNN, wider with more images."""
    n = int(fp["n_images"])
    side = max(size)
    if len(size) == 2 and n >= CV_BELOW and side >= 64:
        notes["network"] = (f"resnet18: {n:,} images of {side} px, enough to train its 11M parameters; "
                            f"{'3x3 stem without max-pool (small inputs)' if side <= 64 else 'its own stem'}.")
        return "resnet18", {"small_input": side <= 64}
    width, rule = (16, "under 1,000") if n < 1000 else (32, "under 10,000") if n < 10_000 else (48, "10,000 or more")
    dropout = 0.3 if n < 1000 else 0.2
    notes["network"] = (f"compact_cnn width {width}, dropout {dropout}: {n:,} images ({rule}: width {width}; "
                        "more images carry more channels, fewer need more dropout).")
    return "compact_cnn", {"width": width, "dropout": dropout}


def _batch(size: list[int], n_train: int) -> int:
    by_pixels = 2 ** int(math.log2(max(1.0, BATCH_PIXELS / math.prod(size))))
    by_data = 2 ** int(math.log2(max(2, n_train // 4)))
    return max(2, min(128, by_pixels, by_data))


def _fold_sizes(pool: int, folds: int) -> tuple[int, int]:
    """Training and validation images of one fold (one split: 15% validation, the default)."""
    n_val = round(pool / folds) if folds > 1 else round(0.15 * pool)
    return max(1, pool - n_val), max(1, n_val)


def _fit_budget(size, network, folds, pool, channels, budget_min, timer: StepTimer, gave_up: list[str]):
    """Measure the candidate and step it down until MIN_EPOCHS fit: ResNet -> compact CNN, then the input
    size (x 0.75 to the minimum side), then the width, then the folds; each step said in ``gave_up``."""
    measured: dict[str, float] = {}
    while True:
        n_train, n_val = _fold_sizes(pool, folds)
        batch = _batch(size, n_train)
        key = json.dumps([network, size, batch])
        if key not in measured:
            measured[key] = float(timer(network[0], dict(network[1]), list(size), channels, batch))
        seconds = measured[key]
        epoch_s = seconds * OVERHEAD * (n_train + n_val / 3)
        epochs = int(budget_min * 60 * USABLE // (folds * epoch_s)) if epoch_s > 0 else MAX_EPOCHS
        if epochs >= MIN_EPOCHS:
            return size, network, folds, min(epochs, MAX_EPOCHS), seconds, batch
        step = _step_down(size, network, folds)
        if step is None:
            gave_up.append(f"epochs: {epochs} fit {budget_min:g} min even with the smallest plan (the plan wants "
                           f"{MIN_EPOCHS}); it trains {max(1, epochs)}: raise --time-budget for a better model")
            return size, network, folds, max(1, epochs), seconds, batch
        (size, network, folds), said = step
        gave_up.append(f"{said} to fit {budget_min:g} min ({epochs} epochs fitted, the plan wants {MIN_EPOCHS})")


def _step_down(size: list[int], network: tuple[str, dict], folds: int):
    """The next smaller candidate and what it gave up, or None when nothing is left to give."""
    name, kwargs = network
    if name == "resnet18":
        return (size, ("compact_cnn", {"width": 48, "dropout": 0.2}), folds), "network resnet18 -> compact_cnn"
    floor = MIN_SIDE[len(size)]
    if max(size) > floor:
        scale = max(0.75, floor / max(size))
        smaller = [max(8, min(n, _round4(n * scale))) for n in size]
        if smaller != size:
            verb = "volumes downsampled" if len(size) == 3 else "input size"
            return (smaller, network, folds), f"{verb} {size} -> {smaller}"
    width = kwargs.get("width", 32)
    narrower = [w for w in WIDTHS if w < width]
    if narrower:
        return (size, (name, {**kwargs, "width": narrower[0]}), folds), f"compact_cnn width {width} -> {narrower[0]}"
    if folds > 1:
        return (size, network, 1), f"cross-validation {folds} folds -> 1 train/validation split"
    return None
