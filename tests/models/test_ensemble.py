"""fold_ensemble for classifiers: the mean of the members' softmax (or sigmoid) over the input and its flips."""

from __future__ import annotations

import math

import pytest
import torch

from medsight.errors import ConfigError
from medsight.models import create_model
from medsight.models.ensemble import mean_probability_logits

# softmax / sigmoid of float32 logits of size ~10 through log-sum-exp: a few ulps per term; 64 ulps is ample
TOL = 64 * torch.finfo(torch.float32).eps


def _ensemble(num_outputs: int, flips=None, members: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("fold_ensemble", in_channels=1, num_outputs=num_outputs, spatial_dims=2,
                        member="compact_cnn", members=members, flips=flips).eval()


def test_a_softmax_ensemble_predicts_the_mean_of_its_members_softmax() -> None:
    net = _ensemble(3)
    x = torch.randn(4, 1, 16, 16)
    with torch.inference_mode():
        expected = torch.stack([torch.softmax(m(x).double(), 1) for m in net.members]).mean(0)
        got = torch.softmax(net(x).double(), 1)
    assert torch.allclose(got, expected, atol=TOL, rtol=0)
    assert not torch.allclose(torch.softmax(net.members[0](x), 1).double(), expected, atol=1e-3)  # members differ
    assert net.gradcam_layer.startswith("members.0.")


def test_flips_average_the_members_over_the_image_and_its_flipped_views() -> None:
    net = _ensemble(2, flips=[[-1], [-2, -1]], members=2)
    x = torch.randn(3, 1, 16, 16)
    with torch.inference_mode():
        views = [x, torch.flip(x, [-1]), torch.flip(x, [-2, -1])]
        expected = torch.stack([torch.softmax(m(v).double(), 1) for v in views for m in net.members]).mean(0)
        got = torch.softmax(net(x).double(), 1)
        plain = torch.stack([torch.softmax(m(x).double(), 1) for m in net.members]).mean(0)
    assert torch.allclose(got, expected, atol=TOL, rtol=0)
    assert not torch.allclose(got, plain, atol=1e-4)  # the flipped views count


def test_a_sigmoid_ensemble_returns_the_logit_of_the_mean_sigmoid_probability() -> None:
    """One output is a sigmoid head: a softmax of one column would be 1 whatever the members say."""
    net = _ensemble(1, flips=[[-1]], members=2)
    x = torch.randn(5, 1, 16, 16)
    with torch.inference_mode():
        views = [x, torch.flip(x, [-1])]
        expected = torch.stack([torch.sigmoid(m(v).double()) for v in views for m in net.members]).mean(0)
        out = net(x)
    assert out.shape == (5, 1)
    assert torch.allclose(torch.sigmoid(out.double()), expected, atol=TOL, rtol=0)


def test_mean_probability_logits_is_exact_on_hand_worked_values_and_stable_for_large_logits() -> None:
    p = (0.5 + 0.75) / 2
    got = mean_probability_logits([torch.tensor([[0.0]]), torch.tensor([[math.log(3.0)]])])
    assert got.item() == pytest.approx(math.log(p / (1 - p)), abs=1e-6)
    big = mean_probability_logits([torch.tensor([[200.0, -200.0]]), torch.tensor([[-200.0, 200.0]])])
    assert torch.allclose(torch.softmax(big, 1), torch.tensor([[0.5, 0.5]]))  # no inf, no NaN
    assert torch.isfinite(mean_probability_logits([torch.tensor([[90.0]]), torch.tensor([[95.0]])])).all()


def test_a_segmenter_ensemble_flips_its_maps_back_before_averaging() -> None:
    torch.manual_seed(0)
    net = create_model("fold_ensemble", in_channels=1, num_outputs=2, spatial_dims=2, member="unet", members=1,
                       member_kwargs={"base_features": 4, "depth": 2}, flips=[[-1]]).eval()
    x = torch.randn(1, 1, 16, 16)
    with torch.inference_mode():
        member = net.members[0]
        expected = (torch.softmax(member(x).double(), 1)
                    + torch.flip(torch.softmax(member(torch.flip(x, [-1])).double(), 1), [-1])) / 2
        got = torch.softmax(net(x).double(), 1)
    assert torch.allclose(got, expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("flips", [[[0]], [[-3]], [[]], [[-1, -1]], [[1]]])
def test_flips_that_are_not_spatial_axes_are_refused(flips) -> None:
    with pytest.raises(ConfigError, match=r"is not a set of spatial axes \[-2, -1\] of a 2D image"):
        _ensemble(2, flips=flips)


def test_the_flip_ensemble_exports_to_onnx_with_the_same_probabilities(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    net = _ensemble(2, flips=[[-1]], members=2)
    x = torch.randn(2, 1, 16, 16)
    torch.onnx.export(net, (x,), str(tmp_path / "m.onnx"), input_names=["x"], output_names=["y"],
                      dynamo=False)
    (got,) = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"x": x.numpy()})
    with torch.inference_mode():
        expected = torch.softmax(net(x), 1)
    assert torch.allclose(torch.softmax(torch.from_numpy(got), 1), expected, atol=1e-5)
