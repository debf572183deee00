"""A classification cross-validation ends with one fold-ensemble bundle, judged out of fold; flip TTA where it pays."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medsight.bundle import load_bundle
from medsight.classification.calibration import choose_temperature
from medsight.classification.metrics import choose_threshold
from medsight.classification.tta import VAL_LOGITS, KeptLogits, decide_tta
from medsight.config import load_config
from medsight.data.layouts import open_dataset
from medsight.data.phantoms import make_chest_phantoms
from medsight.data.splits import resolve_splits
from medsight.inference.classifier import probs_from_logits
from medsight.workflows.train import run_training

# probabilities through float32 log-softmax / log-sum-exp of logits of size ~10: a few ulps per term
TOL = 64 * float(np.finfo(np.float32).eps)
FOLDS = 2


def _config(data: Path, **overrides):
    return load_config(recipe="demo", overrides={
        "data.path": str(data), "data.folds": FOLDS, "data.test_fraction": 0.1, "preprocess.size": [16, 16],
        "train.epochs": 1, "eval.bootstrap": 50, "eval.tta": "auto", **overrides})


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 phantoms: a CV pool of ~108, enough (>= 100 cases) for a temperature to be fitted out of fold."""
    from medsight.data.phantoms import make_chest_phantoms

    return make_chest_phantoms(tmp_path_factory.mktemp("phantoms"), n_per_class=60, size=16, seed=2)


@pytest.fixture(scope="module")
def cv(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("cv")
    return out, run_training(_config(data), out=out, progress=False)


def _oof(out: Path) -> KeptLogits:
    return KeptLogits.concatenate([KeptLogits.load(out / f"fold{k}" / VAL_LOGITS) for k in range(FOLDS)])


def test_the_run_model_is_a_fold_ensemble_of_the_fold_models(cv) -> None:
    out, text = cv
    bundle = load_bundle(out / "model")
    assert bundle.model.name == "fold_ensemble" and bundle.model.kwargs["members"] == FOLDS
    for fold in range(FOLDS):  # the members are the fold models, weight for weight
        for key, value in load_bundle(out / f"fold{fold}" / "model").state_dict.items():
            assert torch.equal(bundle.state_dict[f"members.{fold}.{key}"], value)
    flips = bundle.model.kwargs.get("flips", [])
    x = torch.randn(6, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    net = bundle.build_model()
    with torch.inference_mode():
        views = [x, *(torch.flip(x, axes) for axes in flips)]
        expected = torch.stack([torch.softmax(m(v).double(), 1) for v in views for m in net.members]).mean(0)
        got = torch.softmax(net(x).double(), 1)
    assert torch.allclose(got, expected, atol=TOL, rtol=0)
    assert f"out-of-fold ({FOLDS} folds x 1 member, n=" in text and "95% CI" in text and str(out / "model") in text


def test_one_member_per_fold_keeps_the_plain_layout(cv) -> None:
    """train.members_per_fold 1 (the default): fold{k} folders only, and fold records as they always were."""
    out, _ = cv
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["fold0", "fold1", "model", "test"]
    records = load_bundle(out / "model", weights=False).provenance["folds"]
    assert [set(r) for r in records] == [{"fold", "val", "val_auc", "best_epoch", "epochs_run", "train_seconds"}] * 2
    assert [r["fold"] for r in records] == [0, 1]


def test_temperature_and_threshold_come_from_the_out_of_fold_logits(cv) -> None:
    out, _ = cv
    bundle, oof = load_bundle(out / "model"), _oof(out)
    flips = bundle.model.kwargs.get("flips", [])
    logits = oof.mean_of(flips)
    expected_t = choose_temperature(logits.numpy(), oof.labels, head="softmax")
    assert expected_t.fitted is not None, expected_t.reason  # the pool (>= 100 cases) is large enough to fit one
    assert bundle.threshold_choice.calibration == expected_t.as_dict()
    assert bundle.temperature == expected_t.temperature
    probs = probs_from_logits(logits, "softmax", expected_t.temperature)
    assert bundle.threshold == choose_threshold(oof.labels, probs, method="youden")
    assert f"chosen on the out-of-fold predictions of {len(oof.ids)} cases" in bundle.threshold_choice.note


def test_metrics_are_the_out_of_fold_estimate_of_the_whole_pool_with_cis(cv, data: Path) -> None:
    out, _ = cv
    metrics = json.loads((out / "metrics.json").read_text())
    ds = open_dataset(data, class_names=["normal", "nodule"])
    splits = resolve_splits(ds, _config(data).data)
    pool = len(splits["train"]) + len(splits["val"])
    assert metrics["split"] == "out-of-fold" and metrics["n"] == pool
    for key in ("accuracy", "auc"):
        assert metrics["metrics"][key]["ci_low"] <= metrics[key] <= metrics["metrics"][key]["ci_high"]
    assert (out / "cv_metrics.json").is_file() and (out / "cv_report.html").is_file()
    test = json.loads((out / "test" / "metrics.json").read_text())
    assert test["split"] == "test" and test["n"] == len(splits["test"]) > 0


def test_no_test_case_is_in_any_fold(cv, data: Path) -> None:
    out, _ = cv
    ds = open_dataset(data, class_names=["normal", "nodule"])
    test_ids = {row["case_id"] for row in _rows(out / "test" / "per_case.csv")}
    assert len(test_ids) == len(resolve_splits(ds, _config(data).data)["test"])
    folds = [set(KeptLogits.load(out / f"fold{k}" / VAL_LOGITS).ids) for k in range(FOLDS)]
    assert not folds[0] & folds[1]
    assert not test_ids & set().union(*folds)
    assert {row["case_id"] for row in _rows(out / "per_case.csv")} == set().union(*folds)


def test_the_tta_decision_is_recorded_with_both_numbers(cv) -> None:
    out, text = cv
    bundle, oof = load_bundle(out / "model"), _oof(out)
    decision = bundle.provenance["tta"]
    assert decision["mode"] == "auto" and decision["candidates"] == [[-1]]  # the demo recipe flips left-right
    assert decision["flips"] == ([[-1]] if decision["log_loss_with"] < decision["log_loss_without"] else [])
    assert bundle.model.kwargs.get("flips", []) == decision["flips"]
    again = decide_tta("auto", [[-1]], oof, head="softmax", chosen_on=decision["chosen_on"])
    assert again.as_dict() == decision
    assert all(decision[k] is not None for k in ("log_loss_with", "log_loss_without", "auc_with", "auc_without"))
    assert json.loads((out / "metrics.json").read_text())["tta"] == decision
    assert f"test-time augmentation: {decision['reason']}" in text


def test_a_fold_without_its_kept_logits_is_predicted_again(cv, data: Path, tmp_path: Path) -> None:
    from medsight.classification.ensemble import ensemble_classifier_folds

    out, _ = cv
    copy = shutil.copytree(out, tmp_path / "cv")
    kept = KeptLogits.load(copy / "fold1" / VAL_LOGITS)
    (copy / "fold1" / VAL_LOGITS).unlink()
    cfg = _config(data)
    ds = open_dataset(data, class_names=["normal", "nodule"])
    with pytest.warns(UserWarning, match=r"fold1: no usable val_logits.npz .* predicting its validation cases again"):
        result = ensemble_classifier_folds(cfg, ds, copy, [copy / f"fold{k}" for k in range(FOLDS)])
    again = KeptLogits.load(copy / "fold1" / VAL_LOGITS)
    assert again.ids == kept.ids and again.views == kept.views
    assert np.allclose(again.logits, kept.logits, atol=1e-5)
    assert result.oof["threshold"] == pytest.approx(json.loads((out / "metrics.json").read_text())["threshold"])


def test_resume_of_a_finished_cross_validation_builds_the_same_ensemble(cv, data: Path, tmp_path: Path) -> None:
    out, _ = cv
    copy = shutil.copytree(out, tmp_path / "cv")
    (copy / "model" / "bundle.json").unlink()
    run_training(_config(data), out=copy, resume=True, progress=False)
    first, second = load_bundle(out / "model"), load_bundle(copy / "model")
    assert (first.threshold, first.temperature, first.model) == (second.threshold, second.temperature, second.model)
    assert all(torch.equal(first.state_dict[k], second.state_dict[k]) for k in first.state_dict)
    assert first.provenance["tta"] == second.provenance["tta"]
    before, after = (json.loads((d / "metrics.json").read_text()) for d in (out, copy))
    assert (before["n"], before["auc"], before["accuracy"]) == (after["n"], after["auc"], after["accuracy"])


def test_a_single_sigmoid_run_with_flips_ships_a_one_member_ensemble(data: Path, tmp_path: Path) -> None:
    cfg = _config(data, **{"data.folds": 1, "model.head": "sigmoid", "eval.tta": "flips", "eval.bootstrap": 0})
    text = run_training(cfg, out=tmp_path, progress=False)
    bundle = load_bundle(tmp_path / "model")
    assert bundle.model.name == "fold_ensemble" and bundle.model.head == "sigmoid"
    assert bundle.model.kwargs["members"] == 1 and bundle.model.kwargs["flips"] == [[-1]]
    decision = bundle.provenance["tta"]
    assert decision["chosen_on"].startswith("the validation split (n=") and decision["log_loss_with"] is not None
    assert "test-time augmentation: flips [[-1]] (eval.tta: flips)" in text
    net, x = bundle.build_model(), torch.randn(4, 1, 16, 16)
    with torch.inference_mode():
        member = net.members[0]
        expected = (torch.sigmoid(member(x).double()) + torch.sigmoid(member(torch.flip(x, [-1])).double())) / 2
        assert torch.allclose(torch.sigmoid(net(x).double()), expected, atol=TOL, rtol=0)
    kept = KeptLogits.load(tmp_path / VAL_LOGITS)
    assert bundle.threshold_choice.note.endswith(f"chosen on the validation split (n={len(kept.ids)})")
    features = bundle.domain.features  # a single run's domain: the whole network, calibrated on its validation split
    assert features.member is None and features.n_threshold_cases + features.n_holdout_cases == len(kept.ids)


def test_auto_keeps_flips_that_lower_the_log_loss_and_drops_flips_that_raise_it() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    signal = (2 * y - 1)[:, None] * np.array([[-1.0, 1.0]])

    def kept(flipped_signal: float) -> KeptLogits:
        plain = signal + rng.normal(0, 2, (400, 2))
        flipped = flipped_signal * signal + rng.normal(0, 2, (400, 2))
        return KeptLogits([str(i) for i in range(400)], y, [[], [-1]], np.stack([plain, flipped]).astype(np.float32))

    helps = decide_tta("auto", [[-1]], kept(1.0), head="softmax", chosen_on="400 cases")
    assert helps.flips == [[-1]] and helps.log_loss_with < helps.log_loss_without and "kept" in helps.reason
    hurts = decide_tta("auto", [[-1]], kept(-1.0), head="softmax", chosen_on="400 cases")
    assert hurts.flips == [] and hurts.log_loss_with > hurts.log_loss_without and "not kept" in hurts.reason
    none = decide_tta("auto", [], kept(1.0), head="softmax", chosen_on="400 cases")
    assert none.flips == [] and "augmentation has no flips" in none.reason


def _rows(path: Path) -> list[dict]:
    import csv

    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_the_ensemble_knows_its_domain_from_member_0_and_its_own_fold(cv, data: Path) -> None:
    """The record's feature reference is member 0's, calibrated on fold 0's validation cases (the only cases
    member 0 never trained on); the fingerprint the run wrote gives its channels and intensities."""
    out, _ = cv
    record = load_bundle(out / "model").domain
    fingerprint = json.loads((out / "fingerprint.json").read_text())
    assert record is not None and record.features is not None and record.features.member == 0
    fold0 = resolve_splits(open_dataset(data), _config(data).data.model_copy(update={"fold": 0}))
    assert record.features.n_threshold_cases + record.features.n_holdout_cases == len(fold0["val"])
    assert record.features.n_reference == len(fold0["train"])
    assert record.channels == [1] and record.intensity.high == fingerprint["intensity"]["p99_5"]
    assert fingerprint["n_images"] == len(fold0["train"]) + len(fold0["val"]) + len(fold0["test"])


def test_the_ensembles_training_data_is_recognised_through_a_manifest(cv, data: Path, tmp_path: Path) -> None:
    """evaluate's rule for its own data holds for a fold ensemble: a manifest listing the same files rebuilds the
    whole cross-validation pool its hash covers, so evaluate scores the held-out test split, not every case."""
    from medsight.workflows.evaluate import default_split, is_training_data

    out, _ = cv
    bundle = load_bundle(out / "model", weights=False)
    ds = open_dataset(data)
    manifest = tmp_path / "same_files.csv"
    manifest.write_text("path,label\n" + "".join(f"{item.source},{ds.class_names[item.label]}\n"
                                                  for item in ds.items))
    assert is_training_data(bundle, manifest) and default_split(bundle, manifest)[0] == "test"
    other = make_chest_phantoms(tmp_path / "other", n_per_class=10, size=16, seed=7)
    assert not is_training_data(bundle, other) and default_split(bundle, other)[0] == "all"
