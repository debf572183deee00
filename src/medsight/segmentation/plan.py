"""Turn a data set fingerprint into a training plan (nnU-Net style heuristics).

The plan fixes what nnU-Net derives from the data instead of asking the user: target
spacing, intensity normalisation, patch size, U-Net depth and width, and batch size. Every
decision is explained in the plan's ``notes`` so a person can check it.

Memory estimate (the number the patch and batch sizes are fitted to): a U-Net step stores,
per voxel of the patch and per base feature channel, about ``ACTIVATIONS_PER_VOXEL_FEATURE``
float32 activations (two convolutions per block, each keeping its output, its normalisation
and its nonlinearity, on the encoder and the decoder side; the deeper levels have fewer
voxels and add a geometric series worth less than the first level). Backward roughly doubles
it::

    bytes = batch * patch_voxels * base_features * ACTIVATIONS_PER_VOXEL_FEATURE * 4 * 2

Parameters and optimiser state are small next to this and ignored.

The plan is a :class:`Plan` (pydantic): ``medsight plan`` writes it, training makes and uses it,
and a bundle keeps it in its provenance; :func:`read_plan` loads a ``plan.json``, also one written
before the plan was typed.

Example:
    >>> fp = {"median_spacing": [1.0, 1.0], "spacings": [[1.0, 1.0]], "shapes": [[64, 64]],
    ...       "modality": "MR", "foreground_intensity": [], "labels": [0, 1]}
    >>> plan = make_plan(fp)
    >>> plan.spatial_dims, plan.patch_size, plan.normalization["scheme"]
    (2, [64, 64], 'zscore')
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from medsight.atomic_write import atomic_write_text
from medsight.errors import ConfigError

ACTIVATIONS_PER_VOXEL_FEATURE = 8
ANISOTROPY_RATIO = 3.0
MAX_DEPTH = 5
MIN_BOTTLENECK = 4
MIN_BATCH = 2
MAX_BATCH = {2: 32, 3: 8}
MAX_PATCH_AXIS = {2: 512, 3: 256}
REQUIRED_KEYS = ("median_spacing", "spacings", "shapes", "modality", "foreground_intensity", "labels")


class Plan(BaseModel):
    """What the data set's fingerprint decided for training; every decision is explained in ``notes``.

    ``normalization`` is ``{"scheme": "zscore"}`` (each image by its own statistics) or
    ``{"scheme": "ct", "clip": [low, high], "mean": m, "std": s}``; ``label_names`` maps each label
    value (as a string) to its name (absent in plans written by training before the plan was typed).
    """

    model_config = ConfigDict(extra="forbid")

    spatial_dims: int
    target_spacing: list[float]
    median_shape_resampled: list[float]
    normalization: dict[str, Any]
    patch_size: list[int]
    depth: int
    base_features: int
    batch_size: int
    estimated_memory_mb: float
    memory_budget_mb: float
    modality: str
    labels: list[int]
    notes: list[str]
    label_names: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        """The plan as plain JSON values (``label_names`` left out when unknown), as plan.json and bundles keep it."""
        return self.model_dump(mode="json", exclude_none=True)


def make_plan(
    fp: dict,
    *,
    memory_budget_mb: float = 2000,
    spatial_dims: int | None = None,
    overrides: dict | None = None,
    label_names: dict[int, str] | None = None,
) -> Plan:
    """Derive a training plan from a fingerprint made by :func:`medsight.data.fingerprint.fingerprint`.

    Args:
        fp: the fingerprint.
        memory_budget_mb: accelerator memory one training step may use.
        spatial_dims: 2 for a slice-wise plan of 3D data (the last two axes); default:
            the data's own dimensionality.
        overrides: flat ``{plan_key: value}`` replacing fields of the computed plan.
        label_names: ``{value: name}`` of the labels, kept in the plan.

    Returns:
        The :class:`Plan`.

    Raises:
        ConfigError: a fingerprint missing a field, an impossible ``spatial_dims``, a budget
            too small for the smallest patch, or an unknown, mistyped or inconsistent override.
    """
    missing = [key for key in REQUIRED_KEYS if key not in fp]
    if missing:
        raise ConfigError(
            "fingerprint", f"is missing {', '.join(missing)}", "build it with medsight.data.fingerprint.fingerprint"
        )
    data_dims = len(fp["median_spacing"])
    dims = spatial_dims or data_dims
    if dims not in (2, 3) or dims > data_dims:
        raise ConfigError(
            "spatial_dims", f"is {dims} for {data_dims}D data", f"use 2 or {data_dims} (or leave it unset)"
        )
    if memory_budget_mb <= 0:
        raise ConfigError("memory_budget_mb", f"is {memory_budget_mb}", "give a positive number of megabytes")
    notes: list[str] = []
    if dims < data_dims:
        notes.append(f"2D plan of {data_dims}D data: slices along axis 0, planned on the last two axes.")
    spacings = np.asarray(fp["spacings"], dtype=float)[:, -dims:]
    shapes = np.asarray(fp["shapes"], dtype=float)[:, -dims:]
    target = _target_spacing(spacings, notes)
    resampled = np.median(shapes * spacings / np.asarray(target), axis=0)
    notes.append(f"Median shape after resampling to the target spacing: {_fmt(resampled)} voxels.")
    base = _base_features(resampled, memory_budget_mb, notes)
    patch, depth = _fit_patch(resampled, target, base, memory_budget_mb, notes)
    batch = _fit_batch(patch, base, memory_budget_mb, notes)
    plan = {
        "spatial_dims": dims,
        "target_spacing": target,
        "median_shape_resampled": [float(v) for v in resampled],
        "normalization": _normalization(fp, notes),
        "patch_size": patch,
        "depth": depth,
        "base_features": base,
        "batch_size": batch,
        "estimated_memory_mb": estimate_memory_mb(patch, base, batch),
        "memory_budget_mb": float(memory_budget_mb),
        "modality": fp["modality"],
        "labels": list(fp["labels"]),
        "notes": notes,
    }
    if label_names is not None:
        plan["label_names"] = {str(k): str(v) for k, v in label_names.items()}
    return _apply_overrides(plan, overrides or {})


def write_plan(plan: Plan, path: Path) -> None:
    """Write ``plan`` as indented JSON to ``path``, creating its folder, whole or not at all.

    Raises:
        OutputWriteError: the disk is full, or the folder is not writable; an older plan stays as it was.
    """
    atomic_write_text(Path(path), json.dumps(plan.to_json(), indent=2) + "\n")


def read_plan(path: Path) -> Plan:
    """The plan in a ``plan.json`` (written by ``medsight plan`` or by training, also before the plan was typed).

    Raises:
        ConfigError: the file is not JSON or not a plan.
    """
    path = Path(path)
    try:
        return Plan.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, ValidationError) as err:
        raise ConfigError(path, f"is not a plan ({err})", "write it again with medsight plan") from err


def estimate_memory_mb(patch: list[int], base_features: int, batch: int) -> float:
    """Estimated memory of one U-Net training step in MB (see the module docstring).

    Example:
        >>> estimate_memory_mb([128, 128], 32, 2)
        64.0
    """
    voxels = math.prod(patch)
    return batch * voxels * base_features * ACTIVATIONS_PER_VOXEL_FEATURE * 4 * 2 / 2**20


def _target_spacing(spacings: np.ndarray, notes: list[str]) -> list[float]:
    """Median spacing; on anisotropic data the coarse axis gets its 10th percentile."""
    target = np.median(spacings, axis=0)
    notes.append(f"Target spacing starts from the median spacing {_fmt(target)} mm.")
    if target.max() / target.min() > ANISOTROPY_RATIO:
        axis = int(np.argmax(target))
        target[axis] = np.percentile(spacings[:, axis], 10)
        notes.append(
            f"Anisotropic (max/min spacing > {ANISOTROPY_RATIO:g}): axis {axis} target is the 10th percentile "
            f"of its spacings, {target[axis]:.4g} mm, so the finer cases keep their resolution along it."
        )
    return [float(v) for v in target]


def _base_features(resampled: np.ndarray, budget_mb: float, notes: list[str]) -> int:
    """32 in 2D; in 3D 32 only when the whole capped median shape fits at batch MIN_BATCH, else 16.

    Choosing by fit (not by a budget threshold) keeps a smaller budget from ever giving a
    larger patch.
    """
    if len(resampled) == 2:
        notes.append("Base features 32 (2D U-Net).")
        return 32
    whole = _initial_patch(resampled)
    if estimate_memory_mb(whole, 32, MIN_BATCH) <= budget_mb:
        notes.append("Base features 32 (3D): the whole median shape fits the budget.")
        return 32
    notes.append("Base features 16 (3D): the median shape does not fit at 32, so keep the patch large instead.")
    return 16


def _initial_patch(resampled: np.ndarray) -> list[int]:
    """The resampled median shape, each axis between 8 and MAX_PATCH_AXIS."""
    cap = MAX_PATCH_AXIS[len(resampled)]
    return [max(8, min(round(float(v)), cap)) for v in resampled]


def _depth(patch: list[int]) -> int:
    """Poolings so the smallest axis stays >= MIN_BOTTLENECK voxels, between 1 and MAX_DEPTH."""
    return max(1, min(MAX_DEPTH, int(math.log2(min(patch) / MIN_BOTTLENECK)))) if min(patch) >= 8 else 1


def _fit_patch(
    resampled: np.ndarray, target: list[float], base: int, budget_mb: float, notes: list[str]
) -> tuple[list[int], int]:
    """Shrink the patch's largest axis (in mm) until a batch of MIN_BATCH fits the budget."""
    patch = _initial_patch(resampled)
    notes.append(
        f"Patch starts at the resampled median shape, each axis capped at {MAX_PATCH_AXIS[len(patch)]} (min 8): "
        f"{patch}."
    )
    shrunk = False
    while True:
        depth = _depth(patch)
        step = 2**depth
        patch = [max(step, n // step * step) for n in patch]
        if estimate_memory_mb(patch, base, MIN_BATCH) <= budget_mb:
            break
        axis = max((i for i in range(len(patch)) if patch[i] > 8), key=lambda i: patch[i] * target[i], default=None)
        if axis is None:
            raise ConfigError(
                "memory_budget_mb",
                f"{budget_mb:g} MB does not fit even an 8-voxel patch with batch size {MIN_BATCH}",
                f"raise it above {estimate_memory_mb(patch, base, MIN_BATCH):.1f} MB",
            )
        patch[axis] = max(8, patch[axis] - step)
        shrunk = True
    if shrunk:
        notes.append(
            f"Shrunk the largest axis (in mm) step by step until batch {MIN_BATCH} fits {budget_mb:g} MB: {patch}."
        )
    notes.append(
        f"Depth {depth}: poolings keeping the smallest patch axis >= {MIN_BOTTLENECK} (max {MAX_DEPTH}), so "
        f"the U-Net has {depth + 1} resolution levels; every axis divisible by {2**depth}."
    )
    return patch, depth


def _fit_batch(patch: list[int], base: int, budget_mb: float, notes: list[str]) -> int:
    cap = MAX_BATCH[len(patch)]
    per_item = estimate_memory_mb(patch, base, 1)
    batch = max(MIN_BATCH, min(cap, int(budget_mb // per_item)))
    notes.append(f"Batch size {batch}: as many as fit {budget_mb:g} MB at {per_item:.1f} MB each (cap {cap}).")
    return batch


def _normalization(fp: dict, notes: list[str]) -> dict[str, Any]:
    """CT: clip to foreground percentiles then z-score with global stats; else per-image z-score."""
    if str(fp["modality"]).upper() != "CT":
        notes.append(f"Modality {fp['modality']!r}: z-score each image with its own mean and std.")
        return {"scheme": "zscore"}
    if not fp["foreground_intensity"]:
        raise ConfigError(
            "fingerprint", "is CT data without foreground intensity statistics", "rebuild it with fingerprint()"
        )
    stats = fp["foreground_intensity"][0]
    notes.append(
        "CT: clip to the foreground's 0.5 / 99.5 percentiles "
        f"[{stats['percentile_00_5']:.4g}, {stats['percentile_99_5']:.4g}], then z-score with the "
        f"foreground mean {stats['mean']:.4g} and std {stats['std']:.4g} (same for every image)."
    )
    return {
        "scheme": "ct",
        "clip": [stats["percentile_00_5"], stats["percentile_99_5"]],
        "mean": stats["mean"],
        "std": stats["std"],
    }


def _apply_overrides(plan: dict, overrides: dict) -> Plan:
    """Replace top-level plan fields; unknown keys, values of the wrong type and a patch not divisible
    by 2**depth are errors."""
    fields = set(Plan.model_fields) - {"notes"}
    for key, value in overrides.items():
        if key not in fields:
            raise ConfigError(f"overrides.{key}", "is not a plan field", f"use one of: {', '.join(sorted(fields))}")
        try:
            plan[key] = TypeAdapter(Plan.model_fields[key].annotation).validate_python(value)
        except ValidationError as err:
            raise ConfigError(f"overrides.{key}={value!r}", f"is not a valid {key} ({err.errors()[0]['msg']})",
                              "give a value of the field's type: numbers, lists of numbers or strings") from err
        plan["notes"].append(f"Override: {key} = {value!r}.")
    step = 2 ** plan["depth"]
    if any(int(n) % step for n in plan["patch_size"]):
        raise ConfigError(
            "overrides.patch_size",
            f"{plan['patch_size']} is not divisible by 2**depth = {step}",
            "pick multiples of it, or override depth too",
        )
    if overrides and "estimated_memory_mb" not in overrides:
        plan["estimated_memory_mb"] = estimate_memory_mb(plan["patch_size"], plan["base_features"], plan["batch_size"])
    return Plan.model_validate(plan)


def _fmt(values: Any) -> str:
    return "[" + ", ".join(f"{float(v):.4g}" for v in values) + "]"
