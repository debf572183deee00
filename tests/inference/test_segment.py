"""Sliding-window segmentation, postprocessing and masks written in the source geometry."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medsight.errors import ConfigError, InvalidImageError
from medsight.inference.postprocess import (
    keep_largest_component,
    probs_to_labels,
    write_mask,
    write_probability_maps,
)
from medsight.inference.segment import sliding_window_probs
from medsight.io import read_image_file, read_nifti
from medsight.sample import Sample


def threshold_net(spatial_dims: int) -> torch.nn.Module:
    """A 1x1 conv whose class-1 logit is ``intensity - 0.5`` (class 0 logit is 0)."""
    conv = (torch.nn.Conv2d if spatial_dims == 2 else torch.nn.Conv3d)(1, 2, kernel_size=1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([0.0, 1.0]).reshape(2, 1, *([1] * spatial_dims)))
        conv.bias.copy_(torch.tensor([0.0, -0.5]))
    return conv


def intensities(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Uniform values in [0, 1] kept at least 0.01 away from the 0.5 threshold."""
    values = np.random.default_rng(seed).uniform(0, 1, shape).astype(np.float32)
    values[np.abs(values - 0.5) < 0.01] = 0.8
    return values


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
@pytest.mark.parametrize("mirror_tta", [False, True])
@pytest.mark.parametrize("shape,patch", [((40, 33), (16, 16)), ((13, 11, 9), (8, 8, 8)), ((5, 6, 4), (8, 8, 8))])
def test_sliding_window_gives_the_threshold_mask(overlap, mirror_tta, shape, patch):
    image = intensities(shape)[None]
    probs = sliding_window_probs(
        threshold_net(len(shape)), image, patch_size=patch, overlap=overlap, mirror_tta=mirror_tta
    )
    assert probs.shape == (2, *shape)
    np.testing.assert_array_equal(probs_to_labels(probs), image[0] > 0.5)


@pytest.mark.parametrize("mirror_tta", [False, True])
def test_gaussian_stitching_sums_to_one_without_seams(mirror_tta):
    image = intensities((37, 29), seed=1)[None]
    net = threshold_net(2)
    probs = sliding_window_probs(net, image, patch_size=(12, 10), overlap=0.5, mirror_tta=mirror_tta, batch_size=3)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    with torch.no_grad():
        whole = torch.softmax(net(torch.from_numpy(image)[None]), dim=1)[0].numpy()
    np.testing.assert_allclose(probs, whole, atol=1e-5)


class CountingConv(torch.nn.Module):
    """A random 3x3 conv that records how many windows each forward pass gets."""

    def __init__(self, spatial_dims: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = (torch.nn.Conv2d if spatial_dims == 2 else torch.nn.Conv3d)(1, 2, kernel_size=3, padding=1)
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        return self.conv(x)


@pytest.mark.parametrize(("shape", "patch", "windows_per_pass"),
                         [((200, 180), (32, 32), 64), ((432, 432), (96, 96), 56), ((64, 64, 48), (32, 32, 32), 16),
                          ((192, 144, 96), (96, 96, 96), 4)])
def test_default_batch_fills_about_half_a_million_pixels_and_changes_nothing(shape, patch, windows_per_pass):
    """By default a forward pass takes as many windows as hold about 2**19 pixels (at most 64, at least 4);
    the probabilities equal those of 4 windows a pass."""
    image = intensities(shape, seed=3)[None]
    net = CountingConv(len(shape))
    default = sliding_window_probs(net, image, patch_size=patch, overlap=0.5)
    assert max(net.batches) == windows_per_pass < sum(net.batches)
    four = sliding_window_probs(CountingConv(len(shape)), image, patch_size=patch, overlap=0.5, batch_size=4)
    np.testing.assert_allclose(default, four, atol=1e-6)


@pytest.mark.parametrize("mirror_tta", [False, True])
@pytest.mark.parametrize("shape,patch", [((37, 29), (12, 10)), ((7, 21, 15), (4, 8, 6))])
def test_transpose_tta_averages_the_prediction_on_the_swapped_in_plane_axes(mirror_tta, shape, patch):
    """An orientation-sensitive random conv, a non-square image and window: transpose TTA is the mean of
    the plain prediction and the prediction on the image (and window) with the last two axes swapped,
    swapped back."""
    torch.manual_seed(0)
    net = (torch.nn.Conv2d if len(shape) == 2 else torch.nn.Conv3d)(1, 2, kernel_size=3, padding=1)
    image = intensities(shape, seed=2)[None]
    both = sliding_window_probs(net, image, patch_size=patch, mirror_tta=mirror_tta, transpose_tta=True)
    plain = sliding_window_probs(net, image, patch_size=patch, mirror_tta=mirror_tta)
    swapped = sliding_window_probs(net, np.ascontiguousarray(np.swapaxes(image, -1, -2)), mirror_tta=mirror_tta,
                                   patch_size=(*patch[:-2], patch[-1], patch[-2]))
    assert both.shape == (2, *shape) and both.flags.c_contiguous
    np.testing.assert_allclose(both, (plain + np.swapaxes(swapped, -1, -2)) / 2, atol=1e-6)
    assert np.abs(both - plain).max() > 1e-3  # the swapped view changed the answer
    np.testing.assert_allclose(both.sum(axis=0), 1.0, atol=1e-5)


def test_keep_largest_component_removes_the_small_blob():
    labels = np.zeros((20, 20), np.uint8)
    labels[2:10, 2:10] = 1  # 64 pixels
    labels[15:17, 15:17] = 1  # 4 pixels
    labels[12, 12] = 1  # diagonal neighbour of nothing big: removed
    labels[10, 10] = 1  # touches the big square only at a corner: kept (full connectivity)
    labels[0:3, 15:19] = 2  # class 2 untouched by classes=[1]
    labels[18, 0] = 2
    cleaned = keep_largest_component(labels, classes=[1])
    assert (cleaned == 1).sum() == 65
    assert cleaned[15, 15] == 0 and cleaned[12, 12] == 0 and cleaned[10, 10] == 1
    assert (cleaned == 2).sum() == 13
    assert (keep_largest_component(labels) == 2).sum() == 12


def test_per_class_threshold_drops_low_confidence_voxels():
    probs = np.array(
        [
            [0.1, 0.4, 0.2, 0.2],
            [0.9, 0.6, 0.1, 0.3],
            [0.0, 0.0, 0.7, 0.5],
        ],
        np.float32,
    )
    np.testing.assert_array_equal(probs_to_labels(probs), [1, 1, 2, 2])
    np.testing.assert_array_equal(probs_to_labels(probs, thresholds={1: 0.7, 2: 0.6}), [1, 0, 2, 0])


def oblique_affine() -> np.ndarray:
    angle = np.deg2rad(30.0)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]]
    )
    tilt = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(0.2), -np.sin(0.2)], [0.0, np.sin(0.2), np.cos(0.2)]])
    affine = np.eye(4)
    affine[:3, :3] = tilt @ rotation @ np.diag([0.8, 1.3, 2.5])
    affine[:3, 3] = [-91.5, 40.25, 17.0]
    return affine


def test_mask_overlays_an_oblique_nifti_voxel_for_voxel(tmp_path: Path):
    source = intensities((21, 17, 9), seed=2)
    source_path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(source, oblique_affine()), source_path)
    sample = read_nifti(source_path)
    probs = sliding_window_probs(threshold_net(3), sample.array, patch_size=(8, 8, 8), mirror_tta=True)
    out = write_mask(probs_to_labels(probs), sample, tmp_path / "out" / "mask.nii.gz")
    mask = nib.load(out)
    reference = nib.load(source_path)
    np.testing.assert_array_equal(mask.affine, reference.affine)
    np.testing.assert_allclose(mask.affine, oblique_affine(), atol=1e-4)
    np.testing.assert_array_equal(mask.get_fdata() == 1, reference.get_fdata() > 0.5)
    assert mask.get_data_dtype() == np.uint8


def test_probability_maps_overlay_an_oblique_nifti_voxel_for_voxel(tmp_path: Path):
    source = intensities((21, 17, 9), seed=4)
    nib.save(nib.Nifti1Image(source, oblique_affine()), tmp_path / "scan.nii.gz")
    sample = read_nifti(tmp_path / "scan.nii.gz")
    foreground = sliding_window_probs(threshold_net(3), sample.array, patch_size=(8, 8, 8))[1]
    probs = np.stack([1 - foreground, 0.6 * foreground, 0.4 * foreground])  # three classes
    written = write_probability_maps(probs, sample, tmp_path / "out" / "scan_mask.nii.gz",
                                     ["background", "left kidney", "tumour/cyst"])
    assert written == {"left kidney": tmp_path / "out" / "scan_prob_left_kidney.nii.gz",
                       "tumour/cyst": tmp_path / "out" / "scan_prob_tumour_cyst.nii.gz"}
    for k, path in enumerate(written.values(), start=1):
        stored = nib.load(path)
        np.testing.assert_array_equal(stored.affine, nib.load(tmp_path / "scan.nii.gz").affine)
        assert stored.get_data_dtype() == np.float32
        np.testing.assert_allclose(stored.get_fdata(), probs[k], atol=1e-6)
    np.testing.assert_array_equal(nib.load(written["left kidney"]).get_fdata() > 0.3, source > 0.5)

    with pytest.raises(InvalidImageError, match=r"shape \(9, 17, 21, 2\), not \(2, 21, 17, 9\)"):
        write_probability_maps(probs[:2].T, sample, tmp_path / "bad" / "scan_mask.nii.gz", ["background", "x"])
    assert not (tmp_path / "bad").exists()


def test_png_mask_round_trip(tmp_path: Path):
    pixels = (intensities((30, 45), seed=3) * 255).round().astype(np.uint8)
    Image.fromarray(pixels, mode="L").save(tmp_path / "xray.png")
    sample = read_image_file(tmp_path / "xray.png")
    probs = sliding_window_probs(threshold_net(2), sample.array / 255.0, patch_size=(16, 16))
    write_mask(probs_to_labels(probs), sample, tmp_path / "mask.png")
    mask = np.asarray(Image.open(tmp_path / "mask.png"))
    np.testing.assert_array_equal(mask, np.where(pixels / 255.0 > 0.5, 255, 0))


def test_png_mask_keeps_label_values(tmp_path: Path):
    labels = np.array([[0, 1], [2, 3]], np.uint8)
    write_mask(labels, Sample(np.zeros((1, 2, 2), np.float32), spacing=(1.0, 1.0)), tmp_path / "m.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "m.png")), labels)


@pytest.mark.parametrize(
    "labels,spatial,name,error,words",
    [
        (np.zeros((4, 4), np.uint8), (4, 4), "mask.mha", ConfigError, [".nii.gz", ".png"]),
        (np.zeros((4, 5), np.uint8), (4, 4), "mask.nii.gz", InvalidImageError, ["(4, 5)", "without the channel"]),
        (np.zeros((2, 4, 4), np.uint8), (2, 4, 4), "mask.png", InvalidImageError, ["2D", ".nii.gz"]),
    ],
)
def test_write_mask_rejects_bad_input(tmp_path, labels, spatial, name, error, words):
    sample = Sample(np.zeros((1, *spatial), np.float32), spacing=(1.0,) * len(spatial))
    with pytest.raises(error) as raised:
        write_mask(labels, sample, tmp_path / name)
    assert name in str(raised.value)
    assert all(word in str(raised.value) for word in words)


@pytest.mark.parametrize(
    "image,patch,overlap,error,words",
    [
        (np.zeros((8, 8), np.float32), (4, 4), 0.5, InvalidImageError, ["(8, 8)", "channel"]),
        (np.zeros((1, 8, 8), np.float32), (4, 4, 4), 0.5, ConfigError, ["patch_size", "2 sizes"]),
        (np.zeros((1, 8, 8), np.float32), (4, 4), 1.0, ConfigError, ["overlap", "0.5"]),
    ],
)
def test_sliding_window_rejects_bad_input(image, patch, overlap, error, words):
    with pytest.raises(error) as raised:
        sliding_window_probs(threshold_net(2), image, patch_size=patch, overlap=overlap)
    assert all(word in str(raised.value) for word in words)


def test_threshold_for_an_unknown_class_is_a_config_error():
    with pytest.raises(ConfigError, match=r"thresholds: class 3 .*use class indices 1\.\.1"):
        probs_to_labels(np.full((2, 3), 0.5, np.float32), thresholds={3: 0.5})


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on the broken file
def test_a_3d_model_reads_each_folder_of_dicom_slices_as_one_volume(shared_data: Path, tmp_path: Path):
    from medsight.inference.segmenter import segmentation_inputs

    study = tmp_path / "study"
    shutil.copytree(shared_data / "dicom" / "dcmqi" / "segmentations" / "ct-3slice", study / "ct")
    shutil.copy(shared_data / "dicom" / "pydicom" / "emri_small.dcm", study / "enhanced.dcm")  # multi-frame MR
    (study / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00cut short")
    nib.save(nib.Nifti1Image(intensities((6, 5, 4)), np.eye(4)), study / "scan.nii.gz")

    every_file = [study / "broken.dcm", *(study / "ct" / f"0{k}.dcm" for k in (1, 2, 3)), study / "enhanced.dcm",
                  study / "scan.nii.gz"]
    assert segmentation_inputs([study], volumes=False) == every_file  # a 2D model segments each slice
    assert segmentation_inputs([study], volumes=True) == [
        study / "broken.dcm",  # unreadable: kept, so that its row names the error
        study / "ct", study / "enhanced.dcm", study / "scan.nii.gz",
    ]
    assert segmentation_inputs([study / "ct" / "02.dcm"], volumes=True) == [study / "ct"]


def test_mixed_precision_runs_the_network_in_bfloat16_where_the_cpu_has_it():
    from medsight.runtime.device import cpu_has_native_bf16

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 3, padding=1))
    image = intensities((1, 40, 52), seed=5) * 4
    plain = sliding_window_probs(net, image, patch_size=(16, 16))
    mixed = sliding_window_probs(net, image, patch_size=(16, 16), mixed_precision=True)
    assert mixed.dtype == np.float32 and mixed.shape == plain.shape
    np.testing.assert_allclose(mixed.sum(axis=0), 1.0, atol=1e-5)  # softmax and stitching stay float32
    if cpu_has_native_bf16():
        assert 1e-4 < np.abs(mixed - plain).max() < 0.05  # bfloat16 ran: close, not equal
    else:
        np.testing.assert_array_equal(mixed, plain)  # no native bf16: float32, as without the option


def test_tta_views_of_a_window_share_its_forward_pass():
    """16 windows of 16 px (no overlap) in the 8 views of mirror and transpose TTA, 32 patches a pass: each pass
    takes 4 windows in all their views, so 4 passes in all (one per view and window batch before: 32)."""
    image = intensities((64, 64), seed=4)[None]
    net = CountingConv(2)
    sliding_window_probs(net, image, patch_size=(16, 16), overlap=0.0, mirror_tta=True, transpose_tta=True,
                         batch_size=32)
    assert net.batches == [32, 32, 32, 32]
