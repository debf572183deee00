"""Every registered classifier through the same checks (timm's tests/test_models.py idea)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from medsight.errors import ConfigError
from medsight.models import create_model, list_models

CLASSIFIERS = list_models("classification")
INPUTS = {2: (2, 1, 32, 32), 3: (2, 1, 16, 32, 32)}


def build(name: str, spatial_dims: int, num_outputs: int = 3, in_channels: int = 1) -> torch.nn.Module:
    # DenseNet's stem and three transition poolings leave nothing of a 16-slice volume.
    kwargs = {"small_input": True} if name == "densenet121" and spatial_dims == 3 else {}
    torch.manual_seed(0)
    return create_model(name, in_channels=in_channels, num_outputs=num_outputs, spatial_dims=spatial_dims, **kwargs)


def test_the_expected_classifiers_are_registered():
    assert {"classic_cnn", "compact_cnn", "resnet18", "resnet50", "densenet121"} <= set(CLASSIFIERS)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_forward_backward_and_gradcam_layer(name, spatial_dims):
    x = torch.randn(INPUTS[spatial_dims])
    for num_outputs in (1, 3):
        model = build(name, spatial_dims, num_outputs)
        logits = model(x)
        assert logits.shape == (2, num_outputs)
    logits.sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    missing = [n for n, g in grads.items() if g is None or not torch.isfinite(g).all()]
    assert not missing, f"no finite gradient for {missing[:3]}"
    layer = model.get_submodule(model.gradcam_layer)
    seen = []
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    model.eval()(x)
    handle.remove()
    assert len(seen) == 1 and len(seen[0]) == spatial_dims + 2  # a spatial feature map


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_three_channel_input(name):
    model = build(name, 2, num_outputs=2, in_channels=3).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 2)


@pytest.mark.parametrize("name", ["resnet18", "densenet121"])
def test_small_input_keeps_detail_of_28_pixel_images(name):
    model = create_model(name, in_channels=1, num_outputs=2, spatial_dims=2, small_input=True).eval()
    seen = []
    model.get_submodule(model.gradcam_layer).register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    assert model(torch.randn(1, 1, 28, 28)).shape == (1, 2)
    assert seen[0][-1] >= 3  # not collapsed to 1x1 before the last block


def test_compact_cnn_is_small_and_keeps_channels_last():
    model = create_model("compact_cnn", in_channels=1, num_outputs=2, spatial_dims=2)
    assert sum(p.numel() for p in model.parameters()) <= 500_000
    model = model.to(memory_format=torch.channels_last).eval()
    x = torch.randn(2, 1, 28, 28).to(memory_format=torch.channels_last)
    features = model.features(x)
    assert features.is_contiguous(memory_format=torch.channels_last)
    assert model(x).shape == (2, 2)


def test_compact_cnn_width_kwarg_changes_its_size():
    narrow = create_model("compact_cnn", in_channels=1, num_outputs=2, spatial_dims=2, width=16)
    wide = create_model("compact_cnn", in_channels=1, num_outputs=2, spatial_dims=2, width=32)
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in wide.parameters()) / 3


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_unsupported_spatial_dims_and_kwargs_are_config_errors(name):
    with pytest.raises(ConfigError, match=r"spatial_dims=1: classifiers are 2D or 3D; use a 2- or 3-value"):
        create_model(name, in_channels=1, num_outputs=2, spatial_dims=1)
    with pytest.raises(ConfigError, match=rf"model {name}: bad model arguments.*; check model\.kwargs"):
        create_model(name, in_channels=1, num_outputs=2, spatial_dims=2, no_such_option=1)


@pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="the onnx package is not installed")
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_onnx_export(name, tmp_path):
    model = build(name, 2).eval()
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(model, (torch.randn(1, 1, 32, 32),), str(path), dynamo=False)
    assert path.stat().st_size > 1000
