"""Training and prediction at the plan's target spacing; masks come back on each input's own grid."""

import json

import nibabel as nib
import numpy as np
import pytest

from medsight.config import load_config
from medsight.inference.segmenter import Segmenter
from medsight.io import read_image
from medsight.segmentation.train import train_segmenter
from medsight.transforms.preprocess import spacing_shape


@pytest.mark.parametrize("shape,spacing,target,expected", [
    ((40, 100, 100), (3.0, 1.0, 1.0), (1.5, 1.0, 1.0), (80, 100, 100)),
    ((40, 100), (1.005, 0.5), (1.0, 1.0), (40, 50)),  # within 1%: left alone
    ((7, 9), (1.0, 1.0), None, (7, 9)),
])
def test_spacing_shape(shape, spacing, target, expected):
    assert spacing_shape(shape, spacing, target) == expected


@pytest.fixture
def anisotropic_set(tmp_path):
    """4 volumes of 24x24 voxels of 1 mm, with 8 slices of 3 mm or 12 slices of 2 mm: a ball of radius 7 mm."""
    root = tmp_path / "balls"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    training = []
    for k, (slices, thickness) in enumerate([(8, 3.0), (8, 3.0), (12, 2.0), (12, 2.0)]):
        x, y, z = np.meshgrid(np.arange(24), np.arange(24), np.arange(slices) * thickness, indexing="ij")
        centre = (12 + rng.integers(-3, 4), 12 + rng.integers(-3, 4), slices * thickness / 2)
        ball = ((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= 49).astype(np.uint8)
        image = (100 * ball + rng.normal(0, 10, ball.shape)).astype(np.float32)
        affine = np.diag([1.0, 1.0, thickness, 1.0])
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"ball_{k}.nii.gz")
        nib.save(nib.Nifti1Image(ball, affine), root / "labelsTr" / f"ball_{k}.nii.gz")
        training.append({"image": f"./imagesTr/ball_{k}.nii.gz", "label": f"./labelsTr/ball_{k}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "ball"},
                                                   "training": training}))
    return root


def test_training_resamples_to_the_target_and_masks_return_to_the_source_grid(anisotropic_set, tmp_path,
                                                                             monkeypatch):
    import medsight.inference.segment as segment
    import medsight.segmentation.step as patch_batches

    trained_on, predicted_on = set(), []
    original_patches, original_window = patch_batches.sample_patches, segment.sliding_window_probs

    def spy_patches(images, labels, **kwargs):
        trained_on.update(image.shape[1:] for image in images)
        return original_patches(images, labels, **kwargs)

    def spy_window(network, image, **kwargs):
        predicted_on.append(image.shape[1:])
        return original_window(network, image, **kwargs)

    monkeypatch.setattr(patch_batches, "sample_patches", spy_patches)
    monkeypatch.setattr(segment, "sliding_window_probs", spy_window)
    cfg = load_config(overrides={
        "task": "segmentation", "data.path": str(anisotropic_set), "model.name": "unet",
        "model.kwargs": {"base_features": 4, "depth": 2}, "segment.patch_size": [16, 16, 8],
        "segment.batch_size": 2, "segment.steps_per_epoch": 3, "train.epochs": 1, "data.val_fraction": 0.25,
    })
    result = train_segmenter(cfg, out=tmp_path / "run", progress=False)
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["target_spacing"] == pytest.approx([1.0, 1.0, 2.5])
    segmenter = Segmenter(result["bundle"])
    assert segmenter.settings["target_spacing"] == pytest.approx([1.0, 1.0, 2.5])
    # 8 slices of 3 mm and 12 of 2 mm both become 10 slices of 2.5 mm for training
    assert trained_on == {(24, 24, 10)}
    predicted_on.clear()
    for name in ("ball_0", "ball_2"):  # 3 mm and 2 mm slices: both resampled to 2.5 mm and back
        sample = read_image(anisotropic_set / "imagesTr" / f"{name}.nii.gz")
        out = segmenter.segment_sample(sample)
        assert out.labels.shape == sample.spatial_shape
        assert out.probs.shape == (2, *sample.spatial_shape)
        assert np.allclose(out.probs.sum(axis=0), 1.0, atol=1e-4)
    assert predicted_on == [(24, 24, 10), (24, 24, 10)]  # the network saw the target grid


def test_resample_false_keeps_each_image_on_its_grid(anisotropic_set, tmp_path):
    cfg = load_config(overrides={
        "task": "segmentation", "data.path": str(anisotropic_set), "model.name": "unet",
        "model.kwargs": {"base_features": 4, "depth": 2}, "segment.patch_size": [16, 16, 8],
        "segment.batch_size": 2, "segment.steps_per_epoch": 2, "train.epochs": 1, "segment.resample": False,
    })
    result = train_segmenter(cfg, out=tmp_path / "run", progress=False)
    assert Segmenter(result["bundle"]).settings["target_spacing"] is None
