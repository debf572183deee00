"""Explaining a classification fold ensemble: every method's map is the average of its members' maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from class_ensemble import TEMPERATURE, class_ensemble, phantom_files, sigmoid_ensemble, with_flips
from typer.testing import CliRunner

from medsight.bundle import load_bundle
from medsight.cli.main import app
from medsight.errors import ConfigError
from medsight.explain import METHODS, saliency
from medsight.explain.cam import _scaled
from medsight.explain.run import explain_sample, faithfulness_report
from medsight.inference.predictor import Predictor
from medsight.io import read_image
from medsight.transforms import preprocess

#: the ensemble's map and the hand-made average run the same float32 operations on the same weights
ATOL = 1e-6


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return class_ensemble(tmp_path_factory)


def _input(built, index: int = 0) -> torch.Tensor:
    sample = read_image(phantom_files(built.data)[index])
    return torch.from_numpy(preprocess(sample, load_bundle(built.bundle).preprocess)[None])


def _members(built) -> list[torch.nn.Module]:
    """The members as their own fold bundles hold them (not as the ensemble's weights do)."""
    return [load_bundle(member).build_model() for member in built.members]


@pytest.mark.parametrize("method", METHODS)
def test_an_ensembles_map_is_the_average_of_its_members_maps(built, method: str) -> None:
    x = _input(built, 4)
    ensemble = load_bundle(built.bundle).build_model()
    heat = saliency(ensemble, x, method=method, target=1)
    each = [saliency(member, x, method=method, target=1) for member in _members(built)]
    assert heat.shape == (16, 16) and heat.max() == pytest.approx(1.0)
    np.testing.assert_allclose(heat, _scaled(np.mean(each, axis=0)), atol=ATOL)
    assert not np.allclose(heat, each[0], atol=1e-3)  # not member 0's map


def test_a_flipped_view_is_explained_and_its_map_flipped_back(built, tmp_path: Path) -> None:
    folder = with_flips(built.bundle, tmp_path / "tta", [[-1]])
    x = _input(built, 5)
    heat = saliency(load_bundle(folder).build_model(), x, method="gradcam", target=1)
    each = [saliency(member, view, method="gradcam", target=1) for member in _members(built)
            for view in (x, torch.flip(x, (-1,)))]
    each = [m if k % 2 == 0 else np.flip(m, -1) for k, m in enumerate(each)]
    np.testing.assert_allclose(heat, _scaled(np.mean(each, axis=0)), atol=ATOL)


@pytest.mark.parametrize("target", [0, 1])
def test_a_sigmoid_ensembles_map_is_the_average_of_its_members_maps(built, tmp_path: Path, target: int) -> None:
    folder, nets = sigmoid_ensemble(built.bundle, tmp_path / "sigmoid")
    x = _input(built, 4)
    heat = saliency(load_bundle(folder).build_model(), x, method="gradcam", target=target, head="sigmoid")
    each = [saliency(net, x, method="gradcam", target=target, head="sigmoid") for net in nets]
    np.testing.assert_allclose(heat, _scaled(np.mean(each, axis=0)), atol=ATOL)


def test_explain_sample_reports_the_calibrated_ensemble_prediction(built) -> None:
    bundle = load_bundle(built.bundle)
    sample = read_image(phantom_files(built.data)[3])
    result = explain_sample(bundle, bundle.build_model(), sample, method="gradcam")
    predicted = Predictor(built.bundle, backend="torch").predict_sample(sample)
    assert bundle.temperature == TEMPERATURE
    assert result["label"] == predicted["label"] and result["target"] == predicted["label"]
    assert result["probabilities"] == pytest.approx(predicted["probabilities"], abs=1e-6)


def test_the_command_writes_the_average_map_and_the_faithfulness_report_runs(built, tmp_path: Path) -> None:
    image = phantom_files(built.data)[4]
    done = CliRunner().invoke(app, ["explain", str(built.bundle), str(image), "--out", str(tmp_path / "cams"),
                                    "--target", "nodule", "--no-progress"])
    assert done.exit_code == 0, done.output
    written = np.load(tmp_path / "cams" / f"{image.stem}_gradcam.npy")
    each = [saliency(member, _input(built, 4), method="gradcam", target=1) for member in _members(built)]
    np.testing.assert_allclose(written, _scaled(np.mean(each, axis=0)), atol=1e-5)  # 16 px: no resize
    report = faithfulness_report(bundle=built.bundle, data=str(built.data), split="val", out=tmp_path / "f",
                                 progress=False)
    assert set(report) == {*METHODS, "random"}
    for values in report.values():
        assert values["n"] == 10 and 0 <= values["deletion_auc"] <= 1 and 0 <= values["insertion_auc"] <= 1


def test_a_layer_of_the_member_network_is_taken_and_a_wrong_one_is_clear(built, tmp_path: Path) -> None:
    x = _input(built, 4)
    ensemble = load_bundle(built.bundle).build_model()
    heat = saliency(ensemble, x, method="gradcam", target=1, layer="features.stage2")
    each = [saliency(m, x, method="gradcam", target=1, layer="features.stage2") for m in _members(built)]
    np.testing.assert_allclose(heat, _scaled(np.mean(each, axis=0)), atol=ATOL)
    with pytest.raises(ConfigError, match="is not a layer of this model.*'features'"):
        saliency(ensemble, x, method="gradcam", target=1, layer="members.0.features.stage3")
    bad = CliRunner().invoke(app, ["explain", str(built.bundle), str(phantom_files(built.data)[0]), "--out",
                                   str(tmp_path / "bad"), "--layer", "nope"])
    assert bad.exit_code != 0 and "is not a layer of this model" in bad.output, bad.output
