"""Every registered segmenter: shapes, gradients, Grad-CAM layer, errors; a tiny overfit."""

from __future__ import annotations

import pytest
import torch

import medsight.models.segmenters  # noqa: F401  (fills the registry until registry.py imports it)
from medsight.errors import ConfigError
from medsight.models.registry import create_model, list_models
from medsight.segmentation.losses import make_seg_loss

SEGMENTERS = list_models("segmentation")
SHAPES = {2: (1, 1, 64, 64), 3: (1, 1, 32, 32, 32)}


def test_the_three_segmenters_are_registered_for_segmentation():
    assert {"unet", "classic_unet", "dynunet"} <= set(SEGMENTERS)
    assert not {"unet", "classic_unet", "dynunet"} & set(list_models("classification"))


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", SEGMENTERS)
def test_segmenter_maps_input_to_per_pixel_logits_with_finite_grads(name, spatial_dims):
    torch.manual_seed(0)
    kwargs = {"base_features": 8} if name == "classic_unet" else {}
    model = create_model(name, in_channels=1, num_outputs=3, spatial_dims=spatial_dims, **kwargs)
    x = torch.randn(SHAPES[spatial_dims])
    out = model(x)
    assert out.shape == (1, 3, *x.shape[2:])
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    bottleneck = model.get_submodule(model.gradcam_layer)
    assert any(isinstance(m, torch.nn.modules.conv._ConvNd) for m in bottleneck.modules())


@pytest.mark.parametrize(("name", "depth", "channels"), [("unet", 4, 128), ("unet", 3, 64), ("classic_unet", 5, 512)])
def test_bottleneck_has_the_deepest_width(name, depth, channels):
    model = create_model(name, in_channels=1, num_outputs=2, spatial_dims=2, base_features=channels // 2 ** (depth - 1),
                         depth=depth)
    convs = [m for m in model.get_submodule(model.gradcam_layer).modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[-1].out_channels == channels


def test_dynunet_deep_supervision_stacks_heads_in_train_mode_only():
    model = create_model("dynunet", in_channels=1, num_outputs=2, spatial_dims=2, deep_supervision=True)
    x = torch.randn(2, 1, 32, 32)
    assert model.train()(x).shape == (2, 3, 2, 32, 32)  # full-size output + 2 upsampled heads
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 2, 32, 32)


def test_dynunet_patch_size_keeps_a_thin_axis_unhalved():
    model = create_model("dynunet", in_channels=1, num_outputs=2, spatial_dims=3, patch_size=(8, 64, 64))
    assert [list(s) for s in model.strides] == [[1, 1, 1], [1, 2, 2], [1, 2, 2], [1, 2, 2]]
    assert model(torch.randn(1, 1, 8, 64, 64)).shape == (1, 2, 8, 64, 64)


@pytest.mark.parametrize(
    ("name", "kwargs", "names"),
    [
        ("unet", {"depth": 1}, "depth"),
        ("classic_unet", {"depth": 1}, "depth"),
        ("dynunet", {"patch_size": (32, 32, 32)}, "patch_size"),
        ("dynunet", {"depth": 2, "deep_supervision": True}, "deep_supr_num"),
        ("unet", {"no_such_option": 1}, "model.kwargs"),
    ],
)
def test_bad_segmenter_settings_raise_config_error_naming_the_fix(name, kwargs, names):
    with pytest.raises(ConfigError, match=names):
        create_model(name, in_channels=1, num_outputs=2, spatial_dims=2, **kwargs)


def test_segmenters_reject_1d():
    with pytest.raises(ConfigError, match="preprocess.size"):
        create_model("classic_unet", in_channels=1, num_outputs=2, spatial_dims=1)


def test_classic_unet_rejects_a_size_that_does_not_halve_cleanly():
    model = create_model("classic_unet", in_channels=1, num_outputs=2, spatial_dims=2, base_features=4)
    with pytest.raises(ConfigError, match=r"\(30, 32\).*multiple of 8.*preprocess.size"):
        model(torch.zeros(1, 1, 30, 32))


def test_unet_overfits_one_square_to_dice_above_0_8():
    torch.manual_seed(0)
    mask = torch.zeros(1, 1, 32, 32, dtype=torch.long)
    mask[..., 8:24, 10:22] = 1
    image = mask.float() + 0.3 * torch.randn(1, 1, 32, 32)
    model = create_model("unet", in_channels=1, num_outputs=2, spatial_dims=2, base_features=8, depth=3)
    loss_fn = make_seg_loss("dice_ce", num_classes=2)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        optimiser.zero_grad()
        loss_fn(model(image), mask).backward()
        optimiser.step()
    with torch.no_grad():
        pred = model.eval()(image).argmax(1, keepdim=True)
    dice = 2 * ((pred == 1) & (mask == 1)).sum() / ((pred == 1).sum() + (mask == 1).sum())
    assert dice > 0.8
