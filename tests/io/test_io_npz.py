"""MedMNIST archives: splits, label shapes, and archives that do not follow the official keys."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsight.errors import DatasetError, UnreadableFileError
from medsight.io import medmnist_sample, read_medmnist


def test_breastmnist_has_train_and_val_only(shared_data: Path) -> None:
    splits = read_medmnist(shared_data / "medmnist/breastmnist.npz")
    assert set(splits) == {"train", "val"}  # the test split is withheld
    images, labels = splits["train"]
    assert images.shape == (546, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (546,) and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [147, 399]
    assert np.bincount(splits["val"][1]).tolist() == [21, 57]


def _archive(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def test_all_three_splits_and_colour_images(tmp_path: Path) -> None:
    rgb = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    path = _archive(
        tmp_path / "colour.npz",
        **{f"{s}_images": rgb for s in ("train", "val", "test")},
        **{f"{s}_labels": np.array([[3], [1]]) for s in ("train", "val", "test")},
    )
    splits = read_medmnist(path)
    assert list(splits) == ["train", "val", "test"]
    assert splits["test"][1].tolist() == [3, 1]
    sample = medmnist_sample(splits["train"][0], 1)
    assert sample.array.shape == (3, 4, 4) and sample.array.dtype == np.float32
    np.testing.assert_array_equal(sample.array, np.moveaxis(rgb[1], -1, 0))
    assert sample.meta == {"format": "npz", "index": 1}


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((5, 28, 28), (1, 28, 28)), ((5, 28, 28, 3), (3, 28, 28)), ((5, 8, 8, 8), (1, 8, 8, 8))],
    ids=["grey", "rgb", "3d"],
)
def test_medmnist_sample_layout(shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
    sample = medmnist_sample(np.zeros(shape, np.uint8), 4)
    assert sample.array.shape == expected and len(sample.spacing) == len(expected) - 1


def test_multi_label_sets_keep_their_label_columns(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 1], [1, 0, 0]])
    path = _archive(tmp_path / "chest.npz", train_images=np.zeros((2, 4, 4), np.uint8), train_labels=labels)
    assert read_medmnist(path)["train"][1].shape == (2, 3)


@pytest.mark.parametrize(
    ("arrays", "needles"),
    [
        (
            {"train_images": np.zeros((3, 2, 2)), "train_labels": np.zeros((3, 1)), "val_images": np.zeros((2, 2, 2))},
            ["has val_images but no val_labels", "add val_labels"],
        ),
        ({"train_labels": np.zeros((3, 1))}, ["has train_labels but no train_images"]),
        (
            {"train_images": np.zeros((3, 2, 2)), "train_labels": np.zeros((2, 1))},
            ["train has 3 images but 2 labels", "one label per image"],
        ),
        (
            {"x": np.zeros(3), "y": np.zeros(3)},
            ["no MedMNIST keys; found ['x', 'y']", "train_images/train_labels", "rename the arrays"],
        ),
    ],
    ids=["images-without-labels", "labels-without-images", "length-mismatch", "unknown-keys"],
)
def test_bad_archives_raise_dataset_error(tmp_path: Path, arrays: dict, needles: list[str]) -> None:
    path = _archive(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DatasetError) as err:
        read_medmnist(path)
    assert str(path) in str(err.value)
    for needle in needles:
        assert needle in str(err.value)


@pytest.mark.parametrize("content", [b"", b"not a zip archive at all"], ids=["empty", "not-zip"])
def test_unreadable_archives(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.npz"
    path.write_bytes(content)
    with pytest.raises(UnreadableFileError) as err:
        read_medmnist(path)
    assert str(path) in str(err.value) and "download the .npz again" in str(err.value)
