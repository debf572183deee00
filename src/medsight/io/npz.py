"""MedMNIST ``.npz`` archives: the official ``{split}_images`` / ``{split}_labels`` keys.

Each image array's ``.npy`` header (its shape) is read from the zip archive and one image
(the shape after the count) is checked against the voxel limit (:mod:`medsight.io.limits`)
before the array is inflated and loaded. The limit is per image, as for every other reader:
an archive is a local data set of many images (the 224-pixel MedMNIST+ sets hold billions of
values in all), never an upload.

Example:
    >>> splits = read_medmnist("breastmnist.npz")
    >>> {name: images.shape for name, (images, labels) in splits.items()}
    {'train': (546, 28, 28), 'val': (78, 28, 28)}
    >>> medmnist_sample(splits["train"][0], 0).array.shape
    (1, 28, 28)
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from medsight.errors import DatasetError, UnreadableFileError
from medsight.io.limits import DECODE_ERRORS, check_voxels
from medsight.sample import Sample

#: The split names MedMNIST uses, in order.
SPLITS = ("train", "val", "test")


def read_medmnist(path: str | Path, *, max_voxels: int | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read the splits present in a MedMNIST archive.

    Args:
        path: the ``.npz`` file.
        max_voxels: the most values one image may hold; None for the default limit
            (``$MEDSIGHT_MAX_VOXELS`` or 2^30).

    Returns:
        ``{split: (images, labels)}`` for each split whose keys are present; images as
        stored (uint8 ``(N, H, W)``, ``(N, H, W, 3)`` or ``(N, D, H, W)`` for the 3D
        sets), labels int64 ``(N,)`` (multi-label sets keep ``(N, K)``). A split that is
        absent is simply not in the dict.

    Raises:
        UnreadableFileError: empty, truncated or not an ``.npz`` archive.
        ImageTooLargeError: an image array's header declares images of more values than ``max_voxels``.
        DatasetError: no MedMNIST keys, a split with images but no labels (or the other
            way round), or image and label counts that differ.
    """
    path = Path(path)
    if not path.is_file():
        raise UnreadableFileError(path, "no such file", "check the path")
    if path.stat().st_size == 0:
        raise UnreadableFileError(path, "the file is empty (0 bytes)", "download the .npz again")
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            wanted = [f"{s}_{part}" for s in SPLITS for part in ("images", "labels") if f"{s}_{part}" in keys]
            _check_shapes(path, wanted, max_voxels)
            arrays = {key: archive[key] for key in wanted}
    except (zipfile.BadZipFile, *DECODE_ERRORS) as err:
        raise UnreadableFileError(
            path, f"not a readable .npz archive ({err})", "download the .npz again"
        ) from err
    expected = ", ".join(f"{s}_images/{s}_labels" for s in SPLITS)
    if not arrays:
        raise DatasetError(
            path,
            f"no MedMNIST keys; found {sorted(keys) or 'none'}, expected some of {expected}",
            "rename the arrays to the MedMNIST keys or use another data layout",
        )
    return {
        split: _split(path, split, arrays)
        for split in SPLITS
        if any(k.startswith(f"{split}_") for k in arrays)
    }


def _check_shapes(path: Path, keys: list[str], max_voxels: int | None) -> None:
    """Read each image array's ``.npy`` header (a few bytes inflated) and check one image against the limit."""
    with zipfile.ZipFile(path) as archive:
        for key in (k for k in keys if k.endswith("_images")):
            with archive.open(f"{key}.npy") as member:
                version = np.lib.format.read_magic(member)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else (
                    np.lib.format.read_array_header_2_0
                )
                shape = read_header(member)[0]
            check_voxels(path, shape[1:], max_voxels, source=f"each image of {key}")


def medmnist_sample(images: np.ndarray, index: int) -> Sample:
    """One MedMNIST image as a float32 channel-first :class:`Sample` (values 0..255).

    ``(N, H, W)`` -> ``(1, H, W)``; ``(N, H, W, 3)`` -> ``(3, H, W)``; ``(N, D, H, W)``
    -> ``(1, D, H, W)``.
    """
    image = np.asarray(images[index], dtype=np.float32)
    array = np.moveaxis(image, -1, 0) if image.ndim == 3 and image.shape[-1] == 3 else image[np.newaxis]
    spacing = (1.0,) * (array.ndim - 1)
    return Sample(np.ascontiguousarray(array), spacing=spacing, meta={"format": "npz", "index": int(index)})


def _split(path: Path, split: str, arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    images, labels = arrays.get(f"{split}_images"), arrays.get(f"{split}_labels")
    if images is None or labels is None:
        have, missing = (f"{split}_images", f"{split}_labels")
        if images is None:
            have, missing = missing, have
        raise DatasetError(path, f"has {have} but no {missing}", f"add {missing} or remove {have}")
    if len(images) != len(labels):
        raise DatasetError(
            path,
            f"{split} has {len(images)} images but {len(labels)} labels",
            "rebuild the archive with one label per image",
        )
    labels = np.asarray(labels).astype(np.int64)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    return images, labels
