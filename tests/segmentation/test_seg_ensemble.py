"""The fold ensemble of a segmentation cross-validation: RUN/model, its out-of-fold threshold and scores."""

import json
import shutil

import numpy as np
import pytest
import torch
from disc_images import write_disc_folder

from medsight.bundle import load_bundle
from medsight.data.seg_layouts import open_seg_dataset
from medsight.errors import DatasetError, MedsightError
from medsight.inference.segmenter import Segmenter
from medsight.models import create_model
from medsight.segmentation.pixel_scores import PixelScores


def _cfg(data, **overrides):
    """A small 3-fold CV: unet with 8 base features, 48x48 patches of 4, mirror TTA (kept in the bundles)."""
    from medsight.config import load_config

    base = {"task": "segmentation", "data.path": str(data), "model.name": "unet", "data.folds": 3,
            "model.kwargs": {"base_features": 8}, "segment.patch_size": [48, 48], "segment.batch_size": 4,
            "segment.steps_per_epoch": 6, "segment.mirror_tta": True, "train.lr": 3e-3, "train.epochs": 3}
    return load_config(overrides={**base, **overrides})


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    """A trained 3-fold CV of 12 disc images (the ensemble is built by default)."""
    from medsight.workflows.train import run_training

    root = tmp_path_factory.mktemp("ensemble")
    data = write_disc_folder(root / "discs")
    text = run_training(_cfg(data), out=root / "cv", progress=False)
    return data, root / "cv", text


def _out_of_fold(data, cv):
    """``{case: (fold segmenter, sample, truth, roi)}``: each case with the fold model that validated it."""
    dataset = open_seg_dataset(data)
    cases = {}
    for fold in range(3):
        segmenter = Segmenter(cv / f"fold{fold}" / "model")
        val = set(segmenter.bundle.provenance["split"]["val"])
        for item in dataset.items:
            if item.case_id in val:
                cases[item.case_id] = (segmenter, *dataset.read(item))
    return cases


def test_softmax_of_the_ensemble_is_the_mean_of_its_members_softmax() -> None:
    torch.manual_seed(0)
    net = create_model("fold_ensemble", in_channels=1, num_outputs=3, spatial_dims=2, member="unet", members=3,
                       member_kwargs={"base_features": 8}).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.inference_mode():
        expected = torch.stack([torch.softmax(m(x), 1) for m in net.members]).mean(0)
        got = torch.softmax(net(x), 1)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(torch.softmax(net.members[0](x), 1), expected, atol=1e-3)  # the members differ
    assert net.gradcam_layer.startswith("members.0.model")


def test_a_cross_validation_writes_the_ensemble_of_its_folds(cv_run) -> None:
    data, cv, text = cv_run
    assert "out of fold: n=12" in text and str(cv / "model") in text
    bundle = load_bundle(cv / "model")
    assert bundle.model.name == "fold_ensemble"
    assert bundle.model.kwargs == {"member": "unet", "members": 3, "member_kwargs": {"base_features": 8, "depth": 4}}
    for fold in range(3):  # the members are the fold models, weight for weight
        for key, value in load_bundle(cv / f"fold{fold}" / "model").state_dict.items():
            assert torch.equal(bundle.state_dict[f"members.{fold}.{key}"], value)
    assert bundle.segmentation["mirror_tta"] is True
    assert sorted(v for fold in bundle.provenance["folds"] for v in fold["val"]) == [f"case{k:02d}" for k in range(12)]
    # the ensemble predicts the mean probability of the three fold models (each with its mirror TTA)
    cases = _out_of_fold(data, cv)
    sample = cases["case00"][1]
    mean = np.mean([Segmenter(cv / f"fold{k}" / "model").probabilities(sample) for k in range(3)], axis=0)
    np.testing.assert_allclose(Segmenter(cv / "model").probabilities(sample), mean, atol=1e-5)


def test_the_threshold_and_scores_come_from_the_out_of_fold_predictions(cv_run) -> None:
    """Recomputed here from the fold bundles alone: each case by the fold that did not train on it."""
    data, cv, _ = cv_run
    cases = _out_of_fold(data, cv)
    scores, probs = PixelScores(), {}
    for case_id, (segmenter, sample, truth, roi) in cases.items():
        probs[case_id] = segmenter.probabilities(sample)
        # the run keeps each case's probabilities as float16 and chooses the threshold from those
        scores.add(probs[case_id][1].astype(np.float16).astype(np.float32), truth, roi=roi)
    threshold, _ = scores.best_threshold()
    bundle = load_bundle(cv / "model")
    assert bundle.segmentation["thresholds"]["1"] == pytest.approx(threshold, abs=1 / scores.bins)  # one bin
    metrics = json.loads((cv / "metrics.json").read_text())
    assert metrics["split"] == "out of fold" and metrics["n"] == 12 and metrics["folds"] == 3
    assert metrics["auc"] == pytest.approx(scores.roc_auc(), abs=1e-3)
    assert bundle.metrics["oof_auc"] == metrics["auc"]
    per_case = {row["case_id"]: row["dice"] for row in metrics["per_case"]}
    for case_id in ("case03", "case07"):
        pred = probs[case_id][1] >= bundle.segmentation["thresholds"]["1"]
        truth = cases[case_id][2] > 0
        assert per_case[case_id] == pytest.approx(2 * (pred & truth).sum() / (pred.sum() + truth.sum()), abs=1e-3)
    assert (cv / "report.html").is_file() and (cv / "per_case.csv").is_file()


def test_a_centred_ensemble_centres_the_out_of_fold_predictions_at_their_mean_median(cv_run, tmp_path) -> None:
    """``segment.centre_logits`` on the same folds (no network runs): the level, the threshold and the scores
    all come from the kept out-of-fold probabilities, each case centred at the level."""
    from medsight.inference.postprocess import centre_foreground, median_logit
    from medsight.segmentation.ensemble import ensemble_folds
    from medsight.segmentation.evaluate import probabilities_file

    data, cv, _ = cv_run
    assert load_bundle(cv / "model").segmentation["logit_median"] is None
    copy = shutil.copytree(cv, tmp_path / "cv")
    metrics = ensemble_folds(_cfg(data, **{"segment.centre_logits": True}), copy, [copy / f"fold{k}" for k in range(3)])
    bundle = load_bundle(copy / "model")
    level = bundle.segmentation["logit_median"]
    cases = _out_of_fold(data, copy)
    kept = {case_id: np.load(probabilities_file(copy / f"fold{k}" / "val_probabilities", case_id))[1]
            for k in range(3) for case_id in load_bundle(copy / f"fold{k}" / "model").provenance["split"]["val"]}
    assert len(kept) == 12
    assert level == pytest.approx(np.mean([median_logit(p) for p in kept.values()]), abs=1e-4)
    scores, raw = PixelScores(), PixelScores()
    for case_id, (_, _, truth, roi) in cases.items():
        scores.add(centre_foreground(kept[case_id], level), truth, roi=roi)
        raw.add(kept[case_id].astype(np.float32), truth, roi=roi)
    assert scores.roc_auc() > raw.roc_auc() + 1e-4  # 0.99884 against 0.99862: centring changes the pooled ranking
    assert bundle.segmentation["thresholds"]["1"] == pytest.approx(scores.best_threshold()[0], abs=2e-3)
    assert metrics["auc"] == pytest.approx(scores.roc_auc(), abs=1e-5)
    # on a case: each member centred at the level (as the out-of-fold predictions were), then averaged
    sample = cases["case00"][1]
    members = [Segmenter(copy / f"fold{k}" / "model") for k in range(3)]
    for member in members:
        member.logit_median = level
    centred = [member.probabilities(sample) for member in members]
    assert all(median_logit(p[1]) == pytest.approx(level, abs=1e-3) for p in centred)
    np.testing.assert_allclose(Segmenter(copy / "model").probabilities(sample), np.mean(centred, axis=0), atol=1e-5)
    uncentred = Segmenter(copy / "model")
    uncentred.logit_median = None  # the members' mean, centred or not, is not that
    assert np.abs(uncentred.probabilities(sample) - np.mean(centred, axis=0)).max() > 1e-3
    from medsight.export.graph import describe_preprocessing

    step = next(s for s in describe_preprocessing(bundle)["outside_graph"] if s.startswith("centre"))
    assert f"+ {level:.6g})" in step and "each of the 3 members' probabilities and then averages them" in step
    mean_then_centred = centre_foreground(uncentred.probabilities(sample)[1], level)
    assert np.abs(mean_then_centred - np.mean(centred, axis=0)[1]).max() > 1e-4  # 4.7e-4: these members agree


def test_the_ensemble_is_rebuilt_on_resume_with_lost_probabilities_predicted_again(cv_run, tmp_path) -> None:
    from medsight.workflows.train import run_training

    data, cv, _ = cv_run
    copy = shutil.copytree(cv, tmp_path / "cv")
    shutil.rmtree(copy / "model")
    shutil.rmtree(copy / "fold1" / "val_probabilities")
    run_training(_cfg(data), out=copy, resume=True, progress=False)
    assert sorted(p.name for p in (copy / "fold1" / "val_probabilities").iterdir()) == sorted(
        f"{case}.npy" for case in load_bundle(copy / "fold1" / "model").provenance["split"]["val"])
    first, again = load_bundle(cv / "model"), load_bundle(copy / "model")
    assert again.segmentation["thresholds"] == first.segmentation["thresholds"]
    assert json.loads((copy / "metrics.json").read_text())["dice"] == pytest.approx(
        json.loads((cv / "metrics.json").read_text())["dice"])


def test_folds_trained_with_other_settings_are_a_clear_error_and_keep_the_model(cv_run, tmp_path) -> None:
    from medsight.segmentation.ensemble import ensemble_folds

    data, cv, _ = cv_run
    copy = shutil.copytree(cv, tmp_path / "cv")
    manifest = copy / "fold2" / "model" / "bundle.json"
    raw = json.loads(manifest.read_text())
    raw["segmentation"]["overlap"] = 0.25
    manifest.write_text(json.dumps(raw))
    before = (copy / "model" / "weights.safetensors").read_bytes()
    with pytest.raises(MedsightError, match=r"fold2/model: was trained with other network, preprocessing or plan "
                                            r"settings than .*fold0.*train every fold with the same config"):
        ensemble_folds(_cfg(data), copy, [copy / f"fold{k}" for k in range(3)])
    assert (copy / "model" / "weights.safetensors").read_bytes() == before


def test_evaluating_the_ensemble_on_its_val_split_is_a_clear_error(cv_run, tmp_path) -> None:
    from medsight.workflows.evaluate import run_evaluation

    data, cv, _ = cv_run
    with pytest.raises(DatasetError, match=r"the model has no 'val' cases \(a fold ensemble: each case trained "
                                           r"all but one.*--split all on held-out data"):
        run_evaluation(bundle=cv / "model", data=str(data), split="val", out=tmp_path / "eval", progress=False)
    assert not (tmp_path / "eval").exists()
    held_out = write_disc_folder(tmp_path / "new", n=4, seed=7)
    metrics = run_evaluation(bundle=cv / "model", data=str(held_out), out=tmp_path / "eval", progress=False)
    assert metrics["n"] == 4 and metrics["dice"] > 0.5


def test_ensemble_off_writes_no_run_model(tmp_path) -> None:
    from medsight.workflows.train import run_training

    data = write_disc_folder(tmp_path / "discs")
    cfg = _cfg(data, **{"segment.ensemble": False, "data.folds": 2, "train.epochs": 1})
    text = run_training(cfg, out=tmp_path / "cv", progress=False)
    assert "cross-validation of 2 folds" in text and "out of fold" not in text
    assert not (tmp_path / "cv" / "model").exists() and (tmp_path / "cv" / "fold1" / "model").is_dir()


def test_the_ensemble_exports_to_onnx_with_parity(cv_run, tmp_path) -> None:
    import onnxruntime as ort

    from medsight.export import export_bundle

    _, cv, _ = cv_run
    bundle = shutil.copytree(cv / "model", tmp_path / "model")
    record = export_bundle(bundle=bundle, fmt="onnx", progress=False)
    assert record["parity"]["max_abs_diff"] <= 1e-4
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(1, 1, 48, 48)).astype(np.float32)
    net = load_bundle(bundle).build_model()
    with torch.inference_mode():
        expected = torch.stack([torch.softmax(m(torch.from_numpy(x)), 1) for m in net.members]).mean(0).numpy()
    np.testing.assert_allclose(session.run(["probabilities"], {"image": x})[0], expected, atol=1e-4)


def test_the_drive_recipe_is_a_four_fold_ensemble_within_30_minutes_of_training() -> None:
    """Issue 3's budget: at most 30 minutes of training on 2 cores, whatever the machine's speed (each fold
    stops at its time limit)."""
    from medsight.config import load_config

    cfg = load_config(recipe="drive", overrides={"data.path": "drive/training"})
    assert cfg.data.folds == 4 and cfg.segment.ensemble and cfg.data.fold is None
    assert cfg.data.folds * cfg.train.time_limit_min <= 30
    assert cfg.segment.mirror_tta and cfg.segment.transpose_tta


def test_the_drive_recipe_network_normalises_with_batch_norm() -> None:
    """The recipe's UNet uses batch norm (bench/README.md: F1 up on every fold against instance norm),
    and its network takes a DRIVE-sized patch to two-class logits of the same size."""
    from medsight.config import load_config

    cfg = load_config(recipe="drive", overrides={"data.path": "drive/training"})
    net = create_model(cfg.model.name, in_channels=3, num_outputs=2, spatial_dims=2, **cfg.model.kwargs)
    kinds = {type(m).__name__ for m in net.modules()}
    assert "BatchNorm2d" in kinds and "InstanceNorm2d" not in kinds
    with torch.inference_mode():
        assert net.eval()(torch.zeros(2, 3, 96, 96)).shape == (2, 2, 96, 96)
