"""The centred perceptual hash: copies collide, re-encodings stay close, unrelated images do not."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from medsight.data.duplicates import centred_hashes, exact_groups, grey_plane, low_frequencies, near_groups, near_pairs


def _textures(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.normal(0, 1, (n, 48, 48)), (0, 3, 3))
    return np.clip(128 + smooth / smooth.std() * 30, 0, 255)


def _jpeg(image: np.ndarray) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image.astype(np.uint8)).save(buffer, "JPEG", quality=70)
    return np.asarray(Image.open(buffer), dtype=float)


def test_unrelated_images_differ_in_about_half_the_bits():
    hashes = centred_hashes(low_frequencies(_textures(200)))
    distance = np.bitwise_count(hashes[:, None] ^ hashes[None, :])[np.triu_indices(200, 1)]
    assert 28 <= np.median(distance) <= 36
    assert near_pairs(hashes, max_bits=4) == []


@pytest.mark.parametrize("change", ["jpeg", "noise", "resize"])
def test_a_changed_copy_stays_within_a_few_bits(change):
    images = list(_textures(50))
    original = images[7]
    rng = np.random.default_rng(1)
    copy = {
        "jpeg": lambda: _jpeg(original),
        "noise": lambda: original + rng.normal(0, 3, original.shape),
        "resize": lambda: np.asarray(Image.fromarray(original.astype(np.uint8)).resize((96, 96)), dtype=float),
    }[change]()
    features = np.stack([low_frequencies(im) for im in images] + [low_frequencies(copy)])
    hashes = centred_hashes(features)
    assert (7, 50) in near_pairs(hashes, max_bits=4)


def test_groups_exact_copies_apart_from_near_ones():
    digests = ["a", "b", "a", "c", "d"]
    hashes = np.array([0b0, 0b1, 0b0, 0b111 << 40, 0b11], dtype=np.uint64)
    assert exact_groups(digests) == [[0, 2]]
    assert near_groups(digests, hashes, max_bits=2) == [[0, 1, 2, 4]]
    assert near_groups(["a", "a"], np.zeros(2, np.uint64), max_bits=2) == []


def test_grey_plane_of_colour_and_volume():
    rgb = np.stack([np.zeros((4, 4)), np.ones((4, 4)), 2 * np.ones((4, 4))])
    assert grey_plane(rgb).tolist() == np.ones((4, 4)).tolist()
    volume = np.arange(5)[None, :, None, None] * np.ones((1, 5, 3, 3))
    assert grey_plane(volume).tolist() == (2 * np.ones((3, 3))).tolist()
