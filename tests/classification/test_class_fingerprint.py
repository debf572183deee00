"""The classification fingerprint: sizes, channels, colour, bit depth, modality, intensity and duplicates, read
from small synthetic folders and real DICOM CT (issue 33, part 1)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsight.classification.fingerprint import fingerprint_images
from medsight.data.ct_phantoms import make_ct_vessel_phantoms
from medsight.data.layouts import open_dataset
from medsight.errors import DatasetError

KEYS = {"task", "n_images", "n_read", "class_counts", "spatial_dims", "sizes", "aspect_ratio", "spacing", "channels",
        "colour", "bit_depth", "modality", "dicom_modalities", "body_parts", "intensity", "duplicates", "unreadable"}


def _grey(rows: int, cols: int, seed: int) -> np.ndarray:
    """Smooth random content of its own (no two are near duplicates), spanning exactly 10..200."""
    coarse = np.random.default_rng(seed).integers(10, 201, (4, 4)).astype(np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((cols, rows), Image.Resampling.NEAREST))
    image = image.copy()
    image[0, 0], image[-1, -1] = 10, 200
    return image


def _mixed_folder(root: Path) -> Path:
    """'a': three grey PNGs (20x30, 20x30, 40x20); 'b': two grey-as-RGB PNGs (24x24), one grey RGBA (24x24),
    one real colour PNG (16x16), and an exact copy of a1 (a duplicate with a conflicting label)."""
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    Image.fromarray(_grey(20, 30, 50)).save(root / "a" / "a1.png")
    Image.fromarray(_grey(20, 30, 90)).save(root / "a" / "a2.png")
    Image.fromarray(_grey(40, 20, 120)).save(root / "a" / "a3.png")
    for k in range(2):
        Image.fromarray(np.stack([_grey(24, 24, 60 + k)] * 3, axis=-1)).save(root / "b" / f"rgb{k}.png")
    rgba = np.stack([_grey(24, 24, 70)] * 3 + [np.full((24, 24), 255, np.uint8)], axis=-1)
    Image.fromarray(rgba, mode="RGBA").save(root / "b" / "rgba.png")
    colour = np.zeros((16, 16, 3), np.uint8)
    colour[..., 0], colour[..., 2] = 200, 10
    Image.fromarray(colour).save(root / "b" / "colour.png")
    shutil.copy(root / "a" / "a1.png", root / "b" / "copy_of_a1.png")
    return root


def test_pictures_of_mixed_sizes_and_channels(tmp_path: Path) -> None:
    fp = fingerprint_images(open_dataset(_mixed_folder(tmp_path / "data")), progress=False)
    assert set(fp) == KEYS and fp["task"] == "classification"
    assert fp["n_images"] == fp["n_read"] == 8 and fp["class_counts"] == {"a": 3, "b": 5}
    assert fp["spatial_dims"] == 2
    # rows, cols of 20x30 (3 incl. the copy), 40x20, 24x24 (3), 16x16
    assert fp["sizes"]["min"] == [16.0, 16.0] and fp["sizes"]["max"] == [40.0, 30.0]
    assert fp["sizes"]["median"] == [22.0, 24.0]
    assert fp["aspect_ratio"]["min"] == 0.5 and fp["aspect_ratio"]["max"] == 1.5
    assert fp["spacing"] is None  # pictures state no spacing
    assert fp["channels"] == {"1": 4, "3": 3, "4": 1}  # the files' own counts: RGBA is 4
    assert fp["colour"] is False  # one real colour image of 8; the RGB and RGBA ones are grey
    assert fp["bit_depth"] == {"uint8": 8}
    assert fp["modality"] == {"value": "XR", "source": "guess", "reason": "grey uint8 images without DICOM tags: "
                              "treated as a radiograph-like grey image"}
    assert fp["dicom_modalities"] == {} and fp["body_parts"] == {}
    intensity = fp["intensity"]
    assert (intensity["unit"], intensity["region"]) == ("stored value", "every pixel")
    assert intensity["min"] == 0.0 and intensity["max"] == 200.0  # the colour image's blue 0 ... its red 200
    assert fp["duplicates"] == {"exact_groups": 1, "redundant_copies": 1, "near_groups": 0, "cross_split": 0,
                                "conflicting_labels": 1}
    assert fp["unreadable"] == []


def test_colour_photographs_and_a_configured_modality(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("x", "y"):
        (tmp_path / name).mkdir()
        for k in range(2):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(tmp_path / name / f"{k}.png")
    ds = open_dataset(tmp_path)
    guessed = fingerprint_images(ds, progress=False)
    assert guessed["colour"] is True and guessed["channels"] == {"3": 4}
    assert guessed["modality"] == {"value": "photo", "source": "guess",
                                   "reason": "colour images without DICOM tags: treated as photographs"}
    configured = fingerprint_images(ds, modality="us", progress=False)
    assert configured["modality"] == {"value": "US", "source": "config", "reason": "data.modality is 'us'"}


def test_an_unreadable_file_is_recorded_and_the_rest_go_on(tmp_path: Path) -> None:
    data = _mixed_folder(tmp_path / "data")
    (data / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    fp = fingerprint_images(open_dataset(data), progress=False)
    assert fp["n_images"] == 9 and fp["n_read"] == 8
    assert [u["path"] for u in fp["unreadable"]] == [str(data / "a" / "broken.png")]
    assert "cannot be decoded" in fp["unreadable"][0]["reason"]


def test_nothing_readable_is_a_clear_error(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(DatasetError, match="none of the 2 images read could be decoded"):
        fingerprint_images(open_dataset(tmp_path), progress=False)


def test_more_images_than_max_images_reads_a_stratified_seeded_subset(tmp_path: Path) -> None:
    for name, n in (("big", 12), ("small", 4)):
        (tmp_path / name).mkdir()
        for k in range(n):
            Image.fromarray(_grey(8, 8, 20 + k)).save(tmp_path / name / f"{k}.png")
    ds = open_dataset(tmp_path)
    fp = fingerprint_images(ds, max_images=8, progress=False)
    assert fp["n_images"] == 16 and fp["n_read"] == 8  # 6 of 12 and 2 of 4: each class keeps its share
    assert fp["class_counts"] == {"big": 12, "small": 4}  # counted over every image, not the subset
    assert fingerprint_images(ds, max_images=8, progress=False) == fp  # seeded


def test_ct_phantoms_are_ct_in_hu_over_the_body(tmp_path: Path) -> None:
    ds = open_dataset(make_ct_vessel_phantoms(tmp_path / "ct", n_per_class=3, size=32, seed=0))
    fp = fingerprint_images(ds, progress=False)
    assert fp["modality"] == {"value": "CT", "source": "dicom", "reason": "the DICOM Modality tag of 6 images"}
    assert fp["dicom_modalities"] == {"CT": 6} and fp["bit_depth"] == {"int16": 6}
    assert fp["spacing"] == {"median": [0.7, 0.7]}
    intensity = fp["intensity"]
    assert (intensity["unit"], intensity["region"]) == ("HU", "the body (HU > -500)")
    assert intensity["min"] > -500 and intensity["max"] >= 700  # the air is left out, the bone (>= 700 HU) kept
    assert intensity["p00_5"] < 40 < intensity["median"] < 250 < intensity["p99_5"]  # plain and enhanced tissue


def _shared_data() -> Path | None:
    root = Path(os.environ.get("MEDSIGHT_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
    return root if root.is_dir() else None


def test_real_ct_dicom_reads_hu(tmp_path: Path) -> None:
    shared = _shared_data()
    if shared is None:
        pytest.skip("the shared data (MEDSIGHT_SHARED_DATA or ../shared/data) is not here")
    slices = sorted((shared / "dicom" / "dcmqi" / "segmentations" / "ct-3slice").glob("*.dcm"))
    if not slices:
        pytest.skip("dicom/dcmqi/segmentations/ct-3slice is not in the shared data")
    manifest = tmp_path / "ct.csv"
    manifest.write_text("path,label\n" + "".join(f"{p},{'ab'[k % 2]}\n" for k, p in enumerate(slices)))
    fp = fingerprint_images(open_dataset(manifest), progress=False)
    assert fp["n_read"] == len(slices) and fp["modality"]["value"] == "CT" and fp["modality"]["source"] == "dicom"
    assert fp["intensity"]["unit"] == "HU" and fp["intensity"]["min"] > -500
    assert fp["spacing"] is not None and len(fp["spacing"]["median"]) == 2
    assert set(fp["bit_depth"]) <= {"int16", "int32", "float32"}  # HU below 0: not an unsigned type


def test_an_official_test_split_is_never_read(tmp_path: Path) -> None:
    """The plan and the domain record come from what training may see: a manifest's test rows are left out,
    so a test image of another size and far brighter changes nothing."""
    rows = ["path,label,split"]
    for k in range(6):
        Image.fromarray(_grey(12, 12, 30 + k)).save(tmp_path / f"t{k}.png")
        rows.append(f"t{k}.png,{'ab'[k % 2]},{'train' if k < 4 else 'val'}")
    Image.fromarray(np.full((40, 40), 255, np.uint8)).save(tmp_path / "test.png")
    rows.append("test.png,a,test")
    (tmp_path / "all.csv").write_text("\n".join(rows) + "\n")
    fp = fingerprint_images(open_dataset(tmp_path / "all.csv"), progress=False)
    assert fp["n_images"] == 6 and fp["n_read"] == 6 and fp["class_counts"] == {"a": 3, "b": 3}
    assert fp["sizes"]["max"] == [12, 12] and fp["intensity"]["max"] == 200.0
