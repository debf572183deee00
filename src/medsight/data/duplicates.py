"""Exact and near-duplicate images: content digests and a 64-bit perceptual hash.

The hash is a pHash centred on the data set: each image is shrunk (area averaging) to
32 x 32 grey pixels, its 8 x 8 lowest-frequency DCT coefficients are taken, and bit k says
whether coefficient k is above that coefficient's median over the whole data set. A plain
pHash or dHash compares an image with itself, and medical images of one modality share
their anatomy, so unrelated chest X-rays collide by the thousand; centring on the data set
spends the 64 bits on what tells images apart. Unrelated images then differ in about 32
bits, while a re-encoded or slightly noisy copy differs in a few.

Example:
    >>> images = np.random.default_rng(0).random((3, 28, 28))
    >>> images[2] = images[0] + 0.01
    >>> near_pairs(centred_hashes(low_frequencies(images)), max_bits=4)
    [(0, 2)]
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from scipy.fft import dctn

SHRUNK, KEPT = 32, 8
_CHUNK = 512


def grey_plane(array: np.ndarray) -> np.ndarray:
    """A 2D grey view of a channel-first array: channels averaged, the middle slice of a volume."""
    plane = array.mean(axis=0) if array.ndim >= 3 else array
    while plane.ndim > 2:
        plane = plane[plane.shape[0] // 2]
    return plane


def low_frequencies(images: np.ndarray) -> np.ndarray:
    """The 64 lowest-frequency DCT coefficients of each image of a stack ``(N, H, W)`` (or ``(H, W)``).

    Returns:
        float64 ``(N, 64)`` (``(64,)`` for one image).
    """
    images = np.asarray(images, dtype=np.float64)
    rows = _area_matrix(images.shape[-2], SHRUNK)
    cols = _area_matrix(images.shape[-1], SHRUNK)
    small = rows @ images @ cols.T
    coefficients = dctn(small, axes=(-2, -1), norm="ortho")[..., :KEPT, :KEPT]
    return coefficients.reshape(*images.shape[:-2], KEPT * KEPT)


def centred_hashes(features: np.ndarray) -> np.ndarray:
    """64-bit hashes ``(N,)`` uint64: bit k is set where feature k exceeds its median over the rows."""
    features = np.atleast_2d(features)
    bits = features > np.median(features, axis=0, keepdims=True)
    weights = np.left_shift(np.uint64(1), np.arange(features.shape[1], dtype=np.uint64))
    return (bits.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)


def near_pairs(hashes: np.ndarray, *, max_bits: int) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)``, ``i < j``, whose hashes differ in at most ``max_bits`` bits."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    pairs: list[tuple[int, int]] = []
    for start in range(0, len(hashes), _CHUNK):
        block = hashes[start : start + _CHUNK]
        distance = np.bitwise_count(block[:, None] ^ hashes[None, :])
        i, j = np.nonzero(distance <= max_bits)
        i = i + start
        keep = i < j
        pairs += list(zip(i[keep].tolist(), j[keep].tolist(), strict=True))
    return pairs


def exact_groups(digests: list[str]) -> list[list[int]]:
    """Groups (of 2 or more) of positions with the same digest, in order of first appearance."""
    by_digest: dict[str, list[int]] = defaultdict(list)
    for i, digest in enumerate(digests):
        by_digest[digest].append(i)
    return [group for group in by_digest.values() if len(group) > 1]


def near_groups(digests: list[str], hashes: np.ndarray, *, max_bits: int) -> list[list[int]]:
    """Groups of images linked by hashes within ``max_bits``, holding at least two distinct contents.

    Images linked only through exact copies are not a near-duplicate group (they are exact
    duplicates); a group that joins different contents lists every member, copies included.
    """
    parent = list(range(len(digests)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in near_pairs(hashes, max_bits=max_bits):
        parent[root(i)] = root(j)
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(len(digests)):
        members[root(i)].append(i)
    return [g for g in members.values() if len({digests[i] for i in g}) > 1]


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` weights that average each output cell's share of the input (area resize)."""
    edges = np.linspace(0.0, n_in, n_out + 1)
    starts, ends = edges[:-1, None], edges[1:, None]
    pixel = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(ends, pixel + 1) - np.maximum(starts, pixel), 0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)
