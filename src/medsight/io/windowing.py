"""Display windows: named CT presets, the DICOM linear VOI function, and choosing a window.

A window ``(center, width)`` maps intensities (HU for CT) to ``[0, 1]``: values below
``center - width/2`` become 0, above ``center + width/2`` become 1, linear in between
(DICOM PS3.3 C.11.2.1.2.1).

Example:
    >>> apply_window(np.array([-1000.0, 40.0, 1000.0]), *WINDOW_PRESETS["abdomen"])
    array([0.        , 0.50125313, 1.        ], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom import Dataset

from medsight.errors import ConfigError

#: Named windows as ``(center, width)``.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "abdomen": (40.0, 400.0),
    "liver": (60.0, 160.0),
    "soft_tissue": (50.0, 400.0),
}

#: What ``window=`` accepts: None, a preset name, ``"file"`` or ``(center, width)``.
Window = str | Sequence[float] | None

_PRESET_LIST = ", ".join(WINDOW_PRESETS)


def apply_window(array: np.ndarray, center: float, width: float) -> np.ndarray:
    """Map ``array`` through the DICOM linear window to float32 values in ``[0, 1]``.

    Args:
        array: intensities (after rescale slope/intercept).
        center: window center.
        width: window width, at least 1.

    Returns:
        A float32 array of the same shape with values in ``[0, 1]``.
    """
    _check_width(center, width)
    x = np.asarray(array, dtype=np.float32)
    if width == 1:
        return (x > center - 0.5).astype(np.float32)
    out = (x - (center - 0.5)) / (width - 1) + 0.5
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def resolve_window(window: Window, dataset: Dataset | None = None) -> tuple[float, float] | None:
    """Turn a ``window=`` argument into ``(center, width)``, or None for no window.

    Args:
        window: None, a preset name (see :data:`WINDOW_PRESETS`), ``"file"`` for the
            DICOM's own WindowCenter/WindowWidth (first value if several), or a
            ``(center, width)`` pair.
        dataset: the DICOM dataset, needed for ``"file"``.

    Raises:
        ConfigError: an unknown preset, a malformed pair, or ``"file"`` without a DICOM
            window.

    Example:
        >>> resolve_window("lung")
        (-600.0, 1500.0)
    """
    if window is None:
        return None
    if isinstance(window, str):
        name = window.strip().lower()
        if name == "file":
            return _file_window(dataset)
        if name not in WINDOW_PRESETS:
            raise ConfigError(
                "window",
                f"unknown window preset {window!r}",
                f"use one of: {_PRESET_LIST}, 'file', or a (center, width) pair",
            )
        return WINDOW_PRESETS[name]
    try:
        center, width = (float(v) for v in window)
    except (TypeError, ValueError) as err:
        raise ConfigError(
            "window",
            f"cannot read {window!r} as a (center, width) pair",
            f"give two numbers such as (40, 400), or a preset: {_PRESET_LIST}",
        ) from err
    _check_width(center, width)
    return center, width


def _check_width(center: float, width: float) -> None:
    if not width >= 1:
        raise ConfigError(
            "window",
            f"window width {width} (center {center}) is smaller than 1",
            "use a width of at least 1, e.g. (40, 400)",
        )


def _file_window(dataset: Dataset | None) -> tuple[float, float]:
    where = "window='file'"
    if dataset is None:
        raise ConfigError(
            where,
            "only a DICOM file carries its own window",
            f"pass a preset ({_PRESET_LIST}) or a (center, width) pair",
        )
    for holder in _voi_holders(dataset):
        if "WindowCenter" in holder and "WindowWidth" in holder:
            return _first(holder.WindowCenter), _first(holder.WindowWidth)
    raise ConfigError(
        f"{dataset.filename or 'DICOM dataset'} ({where})",
        "the DICOM has no WindowCenter/WindowWidth",
        f"pass a preset ({_PRESET_LIST}) or a (center, width) pair",
    )


def _voi_holders(dataset: Dataset) -> list[Dataset]:
    """The top level, then the shared and first per-frame FrameVOILUTSequence items."""
    holders = [dataset]
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        items = dataset.get(groups)
        if items and "FrameVOILUTSequence" in items[0]:
            holders.append(items[0].FrameVOILUTSequence[0])
    return holders


def _first(value: object) -> float:
    if isinstance(value, Sequence) and not isinstance(value, str):
        return float(value[0])
    return float(value)  # type: ignore[arg-type]
