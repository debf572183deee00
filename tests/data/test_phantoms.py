"""The synthetic chest phantoms: deterministic, labelled, with the nodule where regions.csv says."""

from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest

from medsight.data.phantoms import make_chest_phantoms, make_phantom, make_phantom_array
from medsight.errors import ConfigError


def _digests(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fmt", ["png", "dcm"])
def test_same_seed_writes_identical_files_and_another_seed_does_not(tmp_path, fmt):
    a = make_chest_phantoms(tmp_path / "a", n_per_class=3, size=32, seed=5, fmt=fmt)
    b = make_chest_phantoms(tmp_path / "b", n_per_class=3, size=32, seed=5, fmt=fmt)
    c = make_chest_phantoms(tmp_path / "c", n_per_class=3, size=32, seed=6, fmt=fmt)
    assert _digests(a) == _digests(b)
    assert len(_digests(a)) == 3 * 2 + 1
    assert _digests(a)[f"nodule/nodule_0000.{fmt}"] != _digests(c)[f"nodule/nodule_0000.{fmt}"]


def test_regions_csv_locates_a_bright_nodule(tmp_path):
    root = make_chest_phantoms(tmp_path, n_per_class=20, size=64, seed=0)
    from PIL import Image

    with open(root / "regions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["label"] for r in rows].count("nodule") == 20 and len(rows) == 40
    for row in rows:
        if row["label"] == "normal":
            assert row["nodule_row"] == row["radius"] == ""
            continue
        image = np.asarray(Image.open(root / row["path"]), dtype=float)
        r, c, radius = float(row["nodule_row"]), float(row["nodule_col"]), float(row["radius"])
        assert 2.0 <= radius <= 5.0
        yy, xx = np.mgrid[0:64, 0:64]
        inside = np.hypot(yy - r, xx - c) <= max(radius - 1, 1)
        ring = (np.hypot(yy - r, xx - c) > radius + 2) & (np.hypot(yy - r, xx - c) <= radius + 5)
        assert image[inside].mean() > image[ring].mean() + 20  # brighter than the lung around it


def test_phantom_array_range_and_nodule_only_when_asked():
    rng = np.random.default_rng(0)
    image = make_phantom_array(rng, 48, nodule=False)
    assert image.shape == (48, 48) and image.dtype == np.float32
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert make_phantom(rng, 48, nodule=False).nodule is None
    spot = make_phantom(rng, 48, nodule=True).nodule
    assert 1.5 <= spot.radius <= 3.75  # 2-5 px scaled to 48 px


def test_dicom_phantom_is_ct_in_hounsfield_units(tmp_path):
    from medsight.io import phi_fields_present, read_image

    root = make_chest_phantoms(tmp_path, n_per_class=1, size=32, seed=0, fmt="dcm")
    sample = read_image(root / "normal" / "normal_0000.dcm")
    assert sample.meta["modality"] == "CT"
    assert sample.array.shape == (1, 32, 32)
    # corner is air outside the body (about -1000 HU), the centre is soft tissue between the lungs
    assert -1000 <= sample.array[0, 0, 0] < -800
    assert -400 < sample.array[0, 16, 16] < 200
    assert "PatientName" in phi_fields_present(root / "normal" / "normal_0000.dcm")


@pytest.mark.parametrize("kwargs", [{"fmt": "jpg"}, {"size": 8}, {"n_per_class": 0}])
def test_bad_arguments_say_what_to_use(tmp_path, kwargs):
    with pytest.raises(ConfigError, match="use"):
        make_chest_phantoms(tmp_path, **kwargs)
