"""A Grad-CAM overlay as a DICOM Secondary Capture: the overlay of the explained slice, in the source study."""

import io

import numpy as np
import pydicom
import pytest
from PIL import Image

from medsight.bundle import load_bundle
from medsight.errors import ConfigError, UnsupportedFileError
from medsight.explain.run import explain_sample, overlay_png
from medsight.explain.secondary_capture import gradcam_secondary_capture, middle_slice
from medsight.io import read_image
from medsight.io.sc_writer import read_secondary_capture
from medsight.sample import Sample

CT_2D = "dicom/pydicom/CT_small.dcm"
CT_SERIES = "dicom/dcmqi/segmentations/ct-3slice"


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    """An untrained 2D compact CNN bundle (32x32): enough to draw a Grad-CAM."""
    import torch

    from medsight.bundle import Bundle
    from medsight.config import ModelConfig, PreprocessConfig
    from medsight.models import create_model

    torch.manual_seed(0)
    net = create_model("compact_cnn", in_channels=1, num_outputs=2, spatial_dims=2)
    return Bundle(task="classification", model=ModelConfig(name="compact_cnn"),
                  preprocess=PreprocessConfig(size=[32, 32], normalize="zscore"), label_names=["normal", "nodule"],
                  state_dict=net.state_dict()).save(tmp_path_factory.mktemp("bundle") / "model")


@pytest.mark.parametrize("source", [CT_2D, CT_SERIES], ids=["2d", "series"])
def test_gradcam_capture_is_the_overlay_of_the_explained_slice(shared_data, tmp_path, bundle_dir, source):
    image = read_image(shared_data / source)
    path = gradcam_secondary_capture(bundle_dir, image, tmp_path / "cam.dcm")
    shown = middle_slice(image) if image.spatial_dims == 3 else image
    bundle = load_bundle(bundle_dir)
    result = explain_sample(bundle, bundle.build_model(), shown, method="gradcam")
    expected = np.asarray(Image.open(io.BytesIO(overlay_png(shown, result["heat"]))).convert("RGB"))
    pixels = read_secondary_capture(path)
    assert pixels.shape == (*shown.spatial_shape, 3)
    np.testing.assert_array_equal(pixels, expected)
    sc = pydicom.dcmread(path)
    assert sc.SeriesDescription == f"medsight gradcam {result['target']}"
    assert sc.StudyInstanceUID == image.meta["StudyInstanceUID"]


def test_non_dicom_image_and_bad_method_are_clear_and_write_nothing(shared_data, tmp_path, bundle_dir):
    picture = Sample(np.zeros((1, 8, 8), np.float32), (1.0, 1.0), meta={"path": "x.png", "format": "png"})
    with pytest.raises(UnsupportedFileError, match="is not a DICOM image"):
        gradcam_secondary_capture(bundle_dir, picture, tmp_path / "b.dcm")
    with pytest.raises(ConfigError, match="unknown explanation method"):
        gradcam_secondary_capture(bundle_dir, read_image(shared_data / CT_2D), tmp_path / "c.dcm", method="magic")
    assert not list(tmp_path.iterdir())
