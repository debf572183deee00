"""The Segmenter's ONNX Runtime backend: chosen automatically from a current export, the same masks as PyTorch,
a centred fold ensemble run member by member from its member files, and a stale export refused or passed over.

Tolerance: the export is checked to give every patch's probabilities within ``PARITY_TOLERANCE`` (1e-4) of
PyTorch's; the Segmenter's map is a weighted mean of such patch probabilities (TTA views, Gaussian-weighted
windows, members), so it stays within the same bound. Centring shifts a map's logits by ``s`` (its level minus its
median logit), which scales a probability difference by at most ``e^|s|``; the fixture ensemble's median logit is
about 0.07 and the test's level -0.5, so ``|s| < 1`` and the bound is ``e x 1e-4``, plus 1e-5 for the centring's
float32 logit arithmetic. Masks can then differ only where a probability lies within that bound of its threshold.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from disc_images import disc_case, write_disc_folder
from PIL import Image
from typer.testing import CliRunner

from medsight.bundle import load_bundle
from medsight.cli.main import app
from medsight.errors import BundleError, ConfigError
from medsight.export import export_bundle
from medsight.export.exporter import PARITY_TOLERANCE
from medsight.inference.segmenter import Segmenter
from medsight.io import read_image

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bundles"
TOLERANCE = PARITY_TOLERANCE * math.e + 1e-5


def _with_tta(source: Path, target: Path, **settings) -> Path:
    """A copy of a fixture bundle with mirror and transpose TTA (and ``settings``) in its segmentation section."""
    bundle = load_bundle(source)
    bundle.segmentation = bundle.segmentation.model_copy(update={"mirror_tta": True, "transpose_tta": True,
                                                                 **settings})
    return bundle.save(target)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg_onnx")
    discs = write_disc_folder(root / "discs", n=6, size=32, seed=0)
    single = _with_tta(FIXTURES / "segmenter", root / "single")
    centred = _with_tta(FIXTURES / "fold_ensemble", root / "centred", logit_median=-0.5)
    for folder in (single, centred):
        export_bundle(bundle=folder, fmt="onnx", data=str(discs), progress=False)
    image = root / "wide.png"
    Image.fromarray(np.concatenate([disc_case(np.random.default_rng(5), 48)[0]] * 2, axis=1)[:40]).save(image)
    return {"single": single, "centred": centred, "image": image, "root": root}


@pytest.mark.parametrize("name", ["single", "centred"])
def test_auto_runs_the_export_and_gives_the_torch_masks(exported, name):
    folder = exported[name]
    onnx, torch_ = Segmenter(folder), Segmenter(folder, backend="torch")
    assert (onnx.backend, torch_.backend) == ("onnx", "torch")
    assert len(onnx.networks) == (2 if name == "centred" else 1)  # a centred ensemble runs member by member
    sample = read_image(exported["image"])  # 40 x 96: several 32 px windows, each in its 8 views
    p_onnx, p_torch = onnx.probabilities(sample), torch_.probabilities(sample)
    assert p_onnx.shape == p_torch.shape == (2, 40, 96)
    assert np.abs(p_onnx - p_torch).max() <= TOLERANCE
    flipped = onnx.labels_from(p_onnx) != torch_.labels_from(p_torch)
    threshold = onnx.thresholds.get(1, 0.5)
    assert np.all(np.abs(p_torch[1][flipped] - threshold) <= TOLERANCE)  # only a tie with the threshold can flip


def test_the_ensemble_export_records_each_member_checked(exported):
    record = json.loads((exported["centred"] / "export.json").read_text())["formats"]["onnx"]
    assert [m["file"] for m in record["members"]] == ["model.member0.onnx", "model.member1.onnx"]
    assert all(m["parity"]["max_abs_diff"] <= PARITY_TOLERANCE for m in record["members"])
    assert all((exported["centred"] / m["file"]).is_file() for m in record["members"])


def test_a_missing_member_file_falls_back_to_torch_or_is_refused(exported, tmp_path):
    copy = Path(shutil.copytree(exported["centred"], tmp_path / "copy"))
    (copy / "model.member1.onnx").unlink()
    with pytest.warns(UserWarning, match="model.member1.onnx is missing"):
        assert Segmenter(copy).backend == "torch"
    with pytest.raises(BundleError, match="model.member1.onnx is missing"):
        Segmenter(copy, backend="onnx")


def test_mixed_precision_stays_on_torch(exported):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Segmenter(exported["single"], mixed_precision=True).backend == "torch"
    with pytest.raises(ConfigError, match="--mixed-precision"):
        Segmenter(exported["single"], mixed_precision=True, backend="onnx")


def test_predict_segments_with_the_backend_asked_for(exported, tmp_path):
    for backend in ("onnx", "torch"):
        result = CliRunner().invoke(app, ["predict", str(exported["single"]), str(exported["image"]), "--out",
                                          str(tmp_path / backend), "--backend", backend, "--no-progress"])
        assert result.exit_code == 0, result.output
    masks = [np.asarray(Image.open(tmp_path / b / "wide_mask.png")) for b in ("onnx", "torch")]
    assert masks[0].shape == (40, 96) and (masks[0] != masks[1]).mean() <= 0.001
