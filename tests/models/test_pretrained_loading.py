"""Pretrained weights: every layout, every shape mismatch, with exact lists of what was loaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from medsight.errors import ConfigError, UnreadableFileError
from medsight.models import create_model
from medsight.models.pretrained import adapt_first_conv, guess_layout, load_pretrained


def compact(in_channels: int = 1, num_outputs: int = 2, width: int = 4):
    return create_model("compact_cnn", in_channels=in_channels, num_outputs=num_outputs, spatial_dims=2,
                        width=width)


def resnet(in_channels: int = 1, num_outputs: int = 2, spatial_dims: int = 2):
    return create_model("resnet18", in_channels=in_channels, num_outputs=num_outputs, spatial_dims=spatial_dims,
                        small_input=True)


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone().contiguous() for k, v in model.state_dict().items()}


def test_medsight_safetensors_same_shapes_loads_every_tensor(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = compact()
    save_file(state(source), str(tmp_path / "w.safetensors"))
    target = compact()
    report = load_pretrained(target, tmp_path / "w.safetensors")
    assert report.layout == "medsight"
    assert report.loaded == list(source.state_dict())
    assert report.reinitialised == report.adapted == report.missing == report.unused == []
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_other_class_count_reinitialises_only_the_head(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = compact(num_outputs=2)
    save_file(state(source), str(tmp_path / "w.safetensors"))
    target = compact(num_outputs=5)
    fresh_head = target.head.weight.detach().clone()
    report = load_pretrained(target, tmp_path / "w.safetensors")
    assert report.reinitialised == ["head.weight", "head.bias"]
    assert set(report.loaded) == set(source.state_dict()) - {"head.weight", "head.bias"}
    assert torch.equal(target.head.weight, fresh_head)
    assert torch.equal(target.features.stage1[0].weight, source.features.stage1[0].weight)


@pytest.mark.parametrize(("k_src", "k", "mode"), [(3, 1, "average"), (1, 3, "average"), (1, 3, "repeat"),
                                                  (3, 1, "repeat"), (2, 4, "repeat")])
def test_first_conv_adapts_input_channels(tmp_path: Path, k_src: int, k: int, mode: str) -> None:
    torch.manual_seed(0)
    source = compact(in_channels=k_src)
    save_file(state(source), str(tmp_path / "w.safetensors"))
    target = compact(in_channels=k)
    report = load_pretrained(target, tmp_path / "w.safetensors", adapt_channels=mode)
    assert report.adapted == ["features.stage1.0.weight"]
    assert "features.stage1.0.weight" not in report.loaded
    assert len(report.loaded) == len(source.state_dict()) - 1
    src_w = source.features.stage1[0].weight.detach()
    new_w = target.features.stage1[0].weight.detach()
    assert new_w.shape == (4, k, 3, 3)
    if mode == "average" or k % k_src == 0:  # an image with equal channels gives the same response
        torch.testing.assert_close(new_w.sum(1), src_w.sum(1))
    if mode == "repeat":  # channel j is source channel j % k_src, scaled by k_src / k
        for j in range(k):
            torch.testing.assert_close(new_w[:, j], src_w[:, j % k_src] * k_src / k)


def test_adapt_first_conv_values() -> None:
    weight = torch.tensor([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1)
    assert adapt_first_conv(weight, 1, "average").flatten().tolist() == [6.0]
    assert adapt_first_conv(weight, 1, "repeat").flatten().tolist() == [3.0]
    grey = torch.tensor([3.0]).reshape(1, 1, 1, 1)
    assert adapt_first_conv(grey, 3, "average").flatten().tolist() == [1.0, 1.0, 1.0]


def test_torchvision_resnet_pth(tmp_path: Path) -> None:
    """A torchvision-named ResNet state dict (.pth, 3 channels, 1000 classes) into a grey 2-class model."""
    torch.manual_seed(0)
    source = resnet(in_channels=3, num_outputs=1000)
    torch.save(state(source), tmp_path / "resnet18.pth")
    target = resnet(in_channels=1, num_outputs=2)
    report = load_pretrained(target, tmp_path / "resnet18.pth", layout="torchvision")
    assert report.adapted == ["conv1.weight"]
    assert report.reinitialised == ["fc.weight", "fc.bias"]
    assert report.unused == report.missing == []
    assert set(report.loaded) == set(target.state_dict()) - {"conv1.weight", "fc.weight", "fc.bias"}
    assert torch.equal(target.layer3[0].conv1.weight, source.layer3[0].conv1.weight)


def test_torchvision_densenet_keys_are_renamed(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = create_model("densenet121", in_channels=1, num_outputs=2, spatial_dims=2, small_input=True)
    renamed = {k.replace(".layers.", ".").replace("class_layers.out.", "classifier."): v
               for k, v in state(source).items()}
    assert guess_layout(renamed) == "torchvision"
    save_file(renamed, str(tmp_path / "densenet.safetensors"))
    target = create_model("densenet121", in_channels=1, num_outputs=2, spatial_dims=2, small_input=True)
    report = load_pretrained(target, tmp_path / "densenet.safetensors")
    assert report.layout == "torchvision"
    assert report.loaded == list(target.state_dict())
    assert torch.equal(target.class_layers.out.weight, source.class_layers.out.weight)


def test_monai_bundle_nested_and_module_prefixed(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = resnet()
    nested = {"epoch": 7, "state_dict": {f"module.{k}": v for k, v in state(source).items()}}
    torch.save(nested, tmp_path / "model.pt")
    target = resnet()
    report = load_pretrained(target, tmp_path / "model.pt")
    assert report.layout == "monai"
    assert report.loaded == list(target.state_dict())
    assert torch.equal(target.fc.weight, source.fc.weight)


def test_medicalnet_3d_resnet_drops_conv_seg(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = resnet(spatial_dims=3)
    tensors = {f"module.{k}": v for k, v in state(source).items() if not k.startswith("fc.")}
    tensors["module.conv_seg.0.weight"] = torch.zeros(32, 512, 3, 3, 3)
    torch.save({"state_dict": tensors}, tmp_path / "resnet_18_23dataset.pth")
    target = resnet(spatial_dims=3, num_outputs=3)
    report = load_pretrained(target, tmp_path / "resnet_18_23dataset.pth")
    assert report.layout == "medicalnet"
    assert report.reinitialised == ["fc.weight", "fc.bias"]
    assert report.unused == report.missing == report.adapted == []
    assert len(report.loaded) == len(target.state_dict()) - 2


def test_other_backbone_shape_is_a_clear_error(tmp_path: Path) -> None:
    save_file(state(compact(width=4)), str(tmp_path / "w.safetensors"))
    with pytest.raises(ConfigError, match=r"features\.stage1\.0\.weight.*\(4, 1, 3, 3\).*\(8, 1, 3, 3\)"):
        load_pretrained(compact(width=8), tmp_path / "w.safetensors")


def test_nothing_matching_is_a_clear_error(tmp_path: Path) -> None:
    save_file(state(compact()), str(tmp_path / "w.safetensors"))
    with pytest.raises(ConfigError, match="no tensor matches the model"):
        load_pretrained(resnet(), tmp_path / "w.safetensors")


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    """weights_only=True: a file holding an arbitrary Python object is not unpickled."""
    torch.save({"model": compact()}, tmp_path / "whole_model.pt")
    with pytest.raises(UnreadableFileError, match="cannot be read as weights"):
        load_pretrained(compact(), tmp_path / "whole_model.pt")


@pytest.mark.parametrize(("name", "content", "message"), [
    ("missing.safetensors", None, "no such weights file"),
    ("w.npy", b"x", "unknown weights suffix"),
    ("w.safetensors", b"garbage", "cannot be read as weights"),
])
def test_bad_files(tmp_path: Path, name: str, content: bytes | None, message: str) -> None:
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(UnreadableFileError, match=message):
        load_pretrained(compact(), tmp_path / name)


def test_bad_layout_and_mode(tmp_path: Path) -> None:
    save_file(state(compact()), str(tmp_path / "w.safetensors"))
    with pytest.raises(ConfigError, match="unknown layout"):
        load_pretrained(compact(), tmp_path / "w.safetensors", layout="timm")
    with pytest.raises(ConfigError, match="unknown mode"):
        load_pretrained(compact(), tmp_path / "w.safetensors", adapt_channels="sum")
