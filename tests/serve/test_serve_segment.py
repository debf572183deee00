"""Segmentation bundles: the mask as PNG, NIfTI (source affine) or JSON, equal to the offline Segmenter's."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medsight.inference.segmenter import Segmenter
from medsight.io import read_image

AFFINE = np.array([[0.0, 0.0, 2.0, -30.0], [0.0, 1.5, 0.0, 12.0], [1.0, 0.0, 0.0, 4.0], [0.0, 0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def seg_client(seg_bundle: Path):
    from fastapi.testclient import TestClient

    from medsight.serve.app import ServeSettings, create_app

    with TestClient(create_app(ServeSettings(bundle=seg_bundle, no_auth=True))) as client:
        yield client, seg_bundle


def _offline(bundle: Path, path: Path):
    sample = read_image(path)
    return sample, Segmenter(bundle).segment_sample(sample)


def test_json_has_voxel_counts_and_the_mask(seg_client, disc_images: Path) -> None:
    client, bundle = seg_client
    case = disc_images / "images" / "c1.png"
    response = client.post("/v1/predict?preview=1", files={"file": ("c1.png", case.read_bytes())},
                           headers={"Accept": "application/json"})
    assert response.status_code == 200, response.text
    body = response.json()
    _, offline = _offline(bundle, case)
    assert body["task"] == "segmentation"
    assert body["label_names"] == offline.label_names
    assert body["voxel_counts"] == offline.voxel_counts
    assert sum(body["voxel_counts"].values()) == 40 * 48
    assert body["mask_shape"] == [40, 48] and body["mask_slice"] is None
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask_png"]))))
    assert mask.shape == (40, 48)
    np.testing.assert_array_equal(mask > 0, offline.labels > 0)
    preview = Image.open(io.BytesIO(base64.b64decode(body["preview_png"])))
    assert preview.size == (48, 40)  # the source grid, so the mask overlays it
    assert body["model"]["name"] == "unet"
    card = client.get("/v1/model").json()
    assert card["task"] == "segmentation" and card["label_names"] == offline.label_names
    assert card["segmentation"]["thresholds"] == Segmenter(bundle).settings["thresholds"]
    assert isinstance(card["provenance"]["split"]["train"], int)  # case counts, not case names


@pytest.mark.parametrize("accept", ["image/png", None])
def test_png_mask_for_2d(seg_client, disc_images: Path, accept: str | None) -> None:
    client, bundle = seg_client
    case = disc_images / "images" / "c2.png"
    headers = {"Accept": accept} if accept else {}
    response = client.post("/v1/predict", content=case.read_bytes(), headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    mask = np.asarray(Image.open(io.BytesIO(response.content)))
    _, offline = _offline(bundle, case)
    np.testing.assert_array_equal(mask, np.where(offline.labels > 0, 255, 0))
    assert response.headers["x-medsight-voxel-counts"]


def test_nifti_mask_keeps_the_geometry(seg_client, disc_images: Path, tmp_path: Path) -> None:
    client, bundle = seg_client
    picture = np.asarray(Image.open(disc_images / "images" / "c0.png"), np.float32)
    nib.save(nib.Nifti1Image(picture, AFFINE), tmp_path / "c0.nii.gz")
    response = client.post("/v1/predict", files={"file": ("c0.nii.gz", (tmp_path / "c0.nii.gz").read_bytes())},
                           headers={"Accept": "application/gzip"})
    assert response.status_code == 200
    (tmp_path / "mask.nii.gz").write_bytes(response.content)
    mask = nib.load(tmp_path / "mask.nii.gz")
    sample, offline = _offline(bundle, tmp_path / "c0.nii.gz")
    np.testing.assert_allclose(mask.affine, sample.affine)
    np.testing.assert_array_equal(np.asarray(mask.dataobj), offline.labels)


def test_a_volume_for_a_2d_segmenter_is_a_clear_error(seg_client, tmp_path: Path) -> None:
    client, _ = seg_client
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), tmp_path / "v.nii.gz")
    data = (tmp_path / "v.nii.gz").read_bytes()
    png_of_volume = client.post("/v1/predict", content=data, headers={"Accept": "image/png"})
    assert png_of_volume.status_code == 406
    assert "PNG holds a 2D mask only" in png_of_volume.json()["error"]["problem"]
    wrong_dims = client.post("/v1/predict", content=data, headers={"Accept": "application/json"})
    assert wrong_dims.status_code == 422
    assert "this model takes 2D images, and this is a 3D volume" in wrong_dims.json()["error"]["problem"]


def test_3d_bundle_answers_nifti_by_default_and_the_middle_slice_in_json(tmp_path_factory, train_seg) -> None:
    from fastapi.testclient import TestClient

    from medsight.serve.app import ServeSettings, create_app

    root = tmp_path_factory.mktemp("vols") / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    zz, yy, xx = np.mgrid[:12, :20, :18]
    for k in range(3):
        mask = ((zz - 6) ** 2 + (yy - 10) ** 2 + (xx - 8 - k) ** 2 <= 16).astype(np.uint8)
        image = (60 + rng.normal(0, 20, mask.shape) + 120 * mask).astype(np.float32)
        nib.save(nib.Nifti1Image(image, AFFINE), root / "images" / f"c{k}.nii.gz")
        nib.save(nib.Nifti1Image(mask, AFFINE), root / "masks" / f"c{k}.nii.gz")
    bundle = train_seg(root, [8, 16, 16], {"base_features": 4, "depth": 2})
    data = (root / "images" / "c1.nii.gz").read_bytes()
    with TestClient(create_app(ServeSettings(bundle=bundle, no_auth=True))) as client:
        default = client.post("/v1/predict", content=data)
        as_json = client.post("/v1/predict", content=data, headers={"Accept": "application/json"}).json()
    assert default.status_code == 200 and default.headers["content-type"] == "application/gzip"
    out = tmp_path_factory.mktemp("out") / "mask.nii.gz"
    out.write_bytes(default.content)
    sample, offline = _offline(bundle, root / "images" / "c1.nii.gz")
    np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj), offline.labels)
    np.testing.assert_allclose(nib.load(out).affine, AFFINE)
    assert as_json["mask_shape"] == [12, 20, 18] and as_json["mask_slice"] == 6
    assert sum(as_json["voxel_counts"].values()) == 12 * 20 * 18
    slice_mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(as_json["mask_png"]))))
    np.testing.assert_array_equal(slice_mask > 0, offline.labels[6] > 0)


def test_a_mixed_precision_service_says_so_and_agrees_with_float32(seg_client, seg_bundle: Path,
                                                                  disc_images: Path) -> None:
    from fastapi.testclient import TestClient

    from medsight.runtime.device import cpu_has_native_bf16
    from medsight.serve.app import ServeSettings, create_app

    plain, _ = seg_client
    settings = ServeSettings(bundle=seg_bundle, no_auth=True, mixed_precision=True)
    with TestClient(create_app(settings)) as mixed:
        for k in range(3):
            case = disc_images / "images" / f"c{k}.png"
            bodies = [client.post("/v1/predict", files={"file": (case.name, case.read_bytes())},
                                  headers={"Accept": "application/json"}).json() for client in (plain, mixed)]
            assert bodies[0]["model"]["precision"] == "float32"
            assert bodies[1]["model"]["precision"] == ("bfloat16" if cpu_has_native_bf16() else "float32")
            masks = [np.asarray(Image.open(io.BytesIO(base64.b64decode(b["mask_png"])))) > 0 for b in bodies]
            assert masks[0].sum() > 20 and (masks[0] != masks[1]).mean() <= 0.01
