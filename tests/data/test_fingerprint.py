"""Tests for the data set fingerprint."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medsight.data.fingerprint import FOREGROUND_SAMPLES_PER_CASE, fingerprint
from medsight.errors import DatasetError, InvalidImageError
from medsight.sample import Sample


def ct_case(seed: int, shape: tuple[int, ...], spacing: float, meta: dict | None = None):
    """A CT-like volume: air-ish background, a cube of tissue (~40 HU) labelled 1, a corner labelled 2."""
    rng = np.random.default_rng(seed)
    image = rng.normal(-800, 50, shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[2:6, 2:6, 2:6] = 1
    label[0, 0, 0] = 2
    image[label > 0] = rng.normal(40, 20, int((label > 0).sum()))
    return Sample(image[None], spacing=(spacing,) * 3, meta=dict(meta or {})), label


def test_ct_set_statistics_match_numpy():
    cases = [
        ct_case(0, (8, 8, 8), 1.0, {"modality": "CT", "path": "a.nii.gz"}),
        ct_case(1, (10, 8, 8), 1.5),
        ct_case(2, (12, 8, 8), 2.0),
    ]
    fp = fingerprint(cases)
    fg = np.concatenate([s.array[0][lab > 0] for s, lab in cases]).astype(np.float64)
    stats = fp["foreground_intensity"][0]
    assert stats["percentile_00_5"] == pytest.approx(np.percentile(fg, 0.5))
    assert stats["percentile_99_5"] == pytest.approx(np.percentile(fg, 99.5))
    assert stats["mean"] == pytest.approx(fg.mean())
    assert stats["std"] == pytest.approx(fg.std())
    assert stats["median"] == pytest.approx(np.median(fg))
    assert fp["n_cases"] == 3
    assert fp["median_spacing"] == [1.5, 1.5, 1.5]
    assert fp["median_shape"] == [10.0, 8.0, 8.0]
    assert fp["modality"] == "CT"
    assert fp["labels"] == [0, 1, 2]
    n_voxels = 8 * 8 * 8 + 10 * 8 * 8 + 12 * 8 * 8
    assert fp["class_frequencies"]["1"] == pytest.approx(3 * 64 / n_voxels)
    assert fp["class_frequencies"]["2"] == pytest.approx(3 / n_voxels)
    assert sum(fp["class_frequencies"].values()) == pytest.approx(1.0)
    json.dumps(fp)


@pytest.mark.parametrize(
    ("meta", "given", "expected"),
    [({"modality": "MR"}, None, "MR"), ({"modality": "MR"}, "CT", "CT"), ({}, None, "other")],
)
def test_modality_given_then_meta_then_other(meta, given, expected):
    assert fingerprint([ct_case(0, (8, 8, 8), 1.0, meta)], modality=given)["modality"] == expected


def test_foreground_sampling_is_capped_and_reproducible():
    rng = np.random.default_rng(3)
    image = rng.normal(100, 10, (1, 300, 300)).astype(np.float32)
    label = np.ones((300, 300), np.int64)
    runs = [fingerprint([(Sample(image, spacing=(1.0, 1.0)), label)]) for _ in range(2)]
    assert runs[0] == runs[1]
    assert label.size > FOREGROUND_SAMPLES_PER_CASE
    assert runs[0]["foreground_intensity"][0]["mean"] == pytest.approx(image.mean(), abs=0.5)
    assert runs[0]["foreground_intensity"][0]["mean"] != pytest.approx(float(image.mean()), abs=1e-6)


def test_multichannel_gives_stats_per_channel():
    image = np.stack([np.full((6, 6), 1.0), np.full((6, 6), 5.0)]).astype(np.float32)
    label = np.zeros((6, 6), np.uint8)
    label[:3] = 1
    fp = fingerprint([(Sample(image, spacing=(1.0, 1.0)), label)])
    assert fp["n_channels"] == 2
    assert [c["mean"] for c in fp["foreground_intensity"]] == [1.0, 5.0]


def test_label_shape_mismatch_names_file_and_fix():
    sample, _ = ct_case(0, (8, 8, 8), 1.0, {"path": "scan_007.nii.gz"})
    with pytest.raises(InvalidImageError, match=r"scan_007\.nii\.gz: label map shape .*; pass the label map"):
        fingerprint([(sample, np.zeros((8, 8, 7), np.uint8))])


def test_wrong_spacing_length_errors():
    sample = Sample(np.zeros((1, 4, 4), np.float32), spacing=(1.0, 1.0, 1.0), meta={"path": "x.png"})
    with pytest.raises(InvalidImageError, match=r"x\.png: spacing .*give one spacing per spatial axis"):
        fingerprint([(sample, np.ones((4, 4), np.uint8))])


def test_mixed_dimensionality_errors():
    flat = Sample(np.zeros((1, 8, 8), np.float32), spacing=(1.0, 1.0), meta={"path": "slice.png"})
    with pytest.raises(InvalidImageError, match=r"slice\.png: .*fingerprint 2D and 3D data .* separately"):
        fingerprint([ct_case(0, (8, 8, 8), 1.0), (flat, np.ones((8, 8), np.uint8))])


@pytest.mark.parametrize(
    ("cases", "message"),
    [
        ([], "no cases; pass at least one"),
        ([(Sample(np.zeros((1, 4, 4), np.float32), spacing=(1.0, 1.0)), np.zeros((4, 4), np.uint8))], "no foreground"),
    ],
)
def test_empty_input_errors(cases, message):
    with pytest.raises(DatasetError, match=message):
        fingerprint(cases)
