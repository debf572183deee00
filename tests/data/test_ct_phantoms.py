"""CT vessel phantoms: real DICOM in HU, the class only in the HU values, and what per-image min-max loses."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pydicom
import pytest
import torch
from sklearn.metrics import roc_auc_score

from medsight.classification.prepare import load_tensors
from medsight.classification.trainer import fit
from medsight.config import PreprocessConfig, TrainConfig
from medsight.data.ct_phantoms import CT_CLASSES, NOISE_PER_BONE_RANGE, make_ct_vessel_phantom, make_ct_vessel_phantoms
from medsight.data.layouts import open_dataset
from medsight.errors import ConfigError
from medsight.io import read_image
from medsight.models.classifiers import compact_cnn

# The largest noise std: the bone at most 3071 HU, i.e. 4071 above air.
MAX_NOISE_STD = NOISE_PER_BONE_RANGE[1] * 4071.0


def _drawn(seed: int, n_per_class: int) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """The (hu, vessels) pairs the generator draws, in the order it writes them."""
    rng = np.random.default_rng(seed)
    return {label: [make_ct_vessel_phantom(rng, 64, enhanced=label == "enhanced") for _ in range(n_per_class)]
            for label in CT_CLASSES}


def test_files_are_ct_dicom_with_rescale_tags_and_read_back_in_hu(tmp_path):
    root = make_ct_vessel_phantoms(tmp_path / "ct", n_per_class=6, seed=3)
    drawn = _drawn(3, 6)
    patient_ids = set()
    for label in CT_CLASSES:
        vessel_values = []
        for i, (hu, vessels) in enumerate(drawn[label]):
            path = root / label / f"case_{i:04d}.dcm"
            ds = pydicom.dcmread(path)
            assert ds.SOPClassUID == pydicom.uid.CTImageStorage and ds.Modality == "CT"
            assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, -1024.0)
            assert ds.pixel_array.dtype == np.int16 and [float(v) for v in ds.PixelSpacing] == [0.7, 0.7]
            patient_ids.add(ds.PatientID)
            sample = read_image(path)
            assert sample.array.shape == (1, 64, 64)
            np.testing.assert_array_equal(sample.array[0], hu)  # whole HU, slope 1: exact
            vessel_values.append(sample.array[0][vessels])
        values = np.concatenate(vessel_values)
        expected = 40.0 if label == "plain" else 250.0
        # the mean of len(values) pixels with independent noise of std <= MAX_NOISE_STD: 5 standard errors
        assert abs(values.mean() - expected) < 5 * MAX_NOISE_STD / math.sqrt(len(values)) + 0.5  # + rounding
    assert patient_ids == {f"PHANTOM-{k:04d}" for k in range(12)}  # one synthetic patient per case
    ds = open_dataset(root)
    assert sorted(ds.class_names) == ["enhanced", "plain"] and len(ds.items) == 12


def test_same_seed_writes_identical_files(tmp_path):
    def digests(root):
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*.dcm"))}

    a = digests(make_ct_vessel_phantoms(tmp_path / "a", n_per_class=2, size=32, seed=1))
    b = digests(make_ct_vessel_phantoms(tmp_path / "b", n_per_class=2, size=32, seed=1))
    c = digests(make_ct_vessel_phantoms(tmp_path / "c", n_per_class=2, size=32, seed=2))
    assert a == b and len(a) == 4 and a["plain/case_0000.dcm"] != c["plain/case_0000.dcm"]


def test_too_small_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError):
        make_ct_vessel_phantoms(tmp_path, n_per_class=1, size=16, seed=0)


def _held_out_auc(train_set, test_set, prep: PreprocessConfig, run_dir) -> float:
    """Train a small compact CNN on train_set with ``prep`` (fixed seed) and score test_set."""
    train, _ = load_tensors(train_set, range(len(train_set.items)), prep, progress=False)
    test, _ = load_tensors(test_set, range(len(test_set.items)), prep, progress=False)
    torch.manual_seed(0)
    model = compact_cnn(in_channels=1, num_outputs=2, spatial_dims=2, width=8)
    cfg = TrainConfig(epochs=8, batch_size=16, lr=3e-3, num_threads=1, seed=0, device="cpu",
                      early_stopping_metric="train_loss")
    fit(model, train, train, cfg=cfg, head="softmax", num_classes=2, run_dir=run_dir, progress=False)
    model.eval()
    with torch.no_grad():
        probs = torch.softmax(model(test.images), dim=1)[:, 1].numpy()
    return float(roc_auc_score(test.labels.numpy(), probs))


@pytest.fixture(scope="module")
def phantom_sets(tmp_path_factory):
    """Training phantoms (32 per class, seed 0) and held-out ones (40 per class, seed 100)."""
    root = tmp_path_factory.mktemp("ct_sets")
    names = list(CT_CLASSES)
    train_set = open_dataset(make_ct_vessel_phantoms(root / "train", n_per_class=32, seed=0), class_names=names)
    test_set = open_dataset(make_ct_vessel_phantoms(root / "test", n_per_class=40, seed=100), class_names=names)
    return train_set, test_set


@pytest.fixture(scope="module")
def minmax_auc(phantom_sets, tmp_path_factory) -> float:
    """The old default's held-out AUC: 64 px, per-image min-max."""
    train_set, test_set = phantom_sets
    old_default = PreprocessConfig(size=[64, 64], normalize="minmax")
    return _held_out_auc(train_set, test_set, old_default, tmp_path_factory.mktemp("minmax"))


def test_hu_window_learns_the_enhancement_and_per_image_minmax_does_not(phantom_sets, minmax_auc, tmp_path):
    train_set, test_set = phantom_sets
    hu_window = PreprocessConfig(size=[64, 64], normalize="ct_window", window=[150, 700])  # -200..500 HU
    auc_hu = _held_out_auc(train_set, test_set, hu_window, tmp_path / "hu")
    assert auc_hu >= 0.9
    # min-max leaves only the tissue level over a random scale: best possible AUC ~0.69 (module docstring)
    assert minmax_auc <= 0.8 and auc_hu - minmax_auc >= 0.2


def test_the_plan_normalises_ct_by_the_data_sets_hu_and_learns_it(phantom_sets, minmax_auc, tmp_path):
    """The plan reads CT from the DICOM tags, clips to the body's HU percentiles with one global z-score,
    and a classifier trained with that preprocessing separates the held-out phantoms; the old default does not."""
    from medsight.classification.fingerprint import fingerprint_images
    from medsight.classification.plan import make_classification_plan

    train_set, test_set = phantom_sets
    fingerprint = fingerprint_images(train_set, progress=False)
    plan = make_classification_plan(fingerprint, time_budget_min=10, seconds_per_image=lambda *_: 1e-3)
    keys = plan.overrides()
    assert keys["data.modality"] == "CT" and keys["preprocess.normalize"] == "dataset"
    low, high = keys["preprocess.intensity_clip"]
    assert (low, high) == (fingerprint["intensity"]["p00_5"], fingerprint["intensity"]["p99_5"])
    assert -200 < low < 40 and 700 < high <= 3071  # below the plain tissue (fat, noise); in the bone
    assert keys["preprocess.size"] == [64, 64] and keys["preprocess.keep_aspect"] is False
    planned = PreprocessConfig(**{key.split(".", 1)[1]: value for key, value in keys.items()
                                  if key.startswith("preprocess.")})
    auc_plan = _held_out_auc(train_set, test_set, planned, tmp_path / "plan")
    assert auc_plan >= 0.9 and auc_plan - minmax_auc >= 0.2
