"""Patch sampling and end-to-end segmentation training on synthetic discs."""

import csv
import itertools
import json
from types import SimpleNamespace

import numpy as np
import pytest
from disc_images import write_disc_folder
from PIL import Image

from medsight.errors import ConfigError, InvalidImageError
from medsight.segmentation.patches import sample_patches
from medsight.segmentation.train import train_segmenter
from medsight.training import loop
from medsight.training.step import TrainStep


@pytest.fixture
def disc_folder(tmp_path):
    return write_disc_folder(tmp_path / "discs")


def _cfg(data, **overrides):
    """A small segmentation config: unet with 8 base features, 48x48 patches of 4."""
    from medsight.config import load_config

    base = {"task": "segmentation", "data.path": str(data), "model.name": "unet",
            "model.kwargs": {"base_features": 8}, "segment.patch_size": [48, 48], "segment.batch_size": 4,
            "segment.steps_per_epoch": 10, "train.lr": 3e-3, "train.epochs": 5}
    return load_config(overrides={**base, **overrides})


def _small_cases():
    images = [np.zeros((1, 40, 40), np.float32), np.zeros((1, 20, 30), np.float32)]
    labels = [np.zeros((40, 40), np.int64), np.zeros((20, 30), np.int64)]
    labels[0][30:33, 5:8] = 1
    labels[1][2, 25] = 2
    return images, labels


def test_every_patch_has_foreground_when_fraction_is_one():
    images, labels = _small_cases()
    _, y = sample_patches(images, labels, patch_size=[16, 16], batch_size=20, foreground_fraction=1.0,
                          generator=np.random.default_rng(0))
    assert y.shape == (20, 16, 16)
    assert all((patch > 0).any() for patch in y)


def test_patches_are_padded_and_reproducible():
    images, labels = _small_cases()
    first = sample_patches(images, labels, patch_size=[32, 32], batch_size=6, generator=np.random.default_rng(3))
    again = sample_patches(images, labels, patch_size=[32, 32], batch_size=6, generator=np.random.default_rng(3))
    assert first[0].shape == (6, 1, 32, 32) and first[0].dtype == np.float32
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"patch_size": [16]}, ConfigError, "pass 2 sizes"),
        ({"batch_size": 0}, ConfigError, "at least 1"),
        ({"foreground_fraction": 1.5}, ConfigError, "[0, 1]"),
    ],
)
def test_bad_patch_arguments_say_what_to_do(kwargs, error, words):
    images, labels = _small_cases()
    args = {"patch_size": [16, 16], "batch_size": 2, **kwargs}
    with pytest.raises(error) as info:
        sample_patches(images, labels, generator=np.random.default_rng(0), **args)
    assert words in str(info.value)


def test_label_shape_mismatch_names_the_case():
    with pytest.raises(InvalidImageError) as info:
        sample_patches([np.zeros((1, 8, 8))], [np.zeros((8, 9))], patch_size=[4, 4], batch_size=1,
                       generator=np.random.default_rng(0))
    assert "case 0" in str(info.value) and "channel-first" in str(info.value)


def test_train_segmenter_learns_discs_and_writes_the_run(disc_folder, tmp_path):
    out = tmp_path / "run"
    result = train_segmenter(_cfg(disc_folder), out=out, progress=False)
    assert result["best_val_dice"] > 0.7
    assert (out / "model" / "bundle.json").is_file() and (out / "model" / "weights.safetensors").is_file()
    manifest = json.loads((out / "model" / "bundle.json").read_text())
    assert manifest["task"] == "segmentation" and manifest["preprocess"]["size"] == [48, 48]
    assert manifest["segmentation"]["logit_median"] is None  # segment.centre_logits is off by default
    metrics = json.loads((out / "metrics.json").read_text())
    fg = next(name for name in metrics["summary"])
    assert metrics["summary"][fg]["metrics"]["dice"]["mean"] > 0.7
    # no region of interest: dice is the mean over cases (nnU-Net's), not the pooled pixel F1
    assert metrics["dice"] == pytest.approx(np.mean([row["dice"] for row in metrics["per_case"]]))
    assert metrics["dice"] != pytest.approx(metrics["f1"], abs=1e-9) and "dice_mean_case" not in metrics
    assert metrics["summary"][fg]["metrics"]["hd95"]["mean"] is not None
    assert len((out / "metrics.csv").read_text().splitlines()) == 6
    header = (out / "metrics.csv").read_text().splitlines()[0]  # the columns users' scripts read, in order
    assert header == "epoch,train_loss,val_dice,lr,patches_per_s,seconds"
    resumed = train_segmenter(_cfg(disc_folder, **{"train.epochs": 6, "segment.steps_per_epoch": 2}), out=out,
                              resume=True, progress=False)
    assert resumed["epochs_run"] == 6
    assert len((out / "metrics.csv").read_text().splitlines()) == 7


def test_train_task_segmentation_uses_the_run_folder(disc_folder, tmp_path) -> None:
    """`medsight train --task segmentation` goes through the same config-in, run-folder-out contract."""
    from medsight.config import load_config
    from medsight.workflows.train import run_training

    cfg = load_config(overrides={"task": "segmentation", "data.path": str(disc_folder), "train.epochs": 1,
                                 "model.name": "unet", "model.kwargs": {"base_features": 8}})
    text = run_training(cfg, out=tmp_path / "run", progress=False)
    assert text.startswith("val: n=") and "dice=" in text and "pixel auc=" in text
    assert json.loads((tmp_path / "run" / "model" / "bundle.json").read_text())["task"] == "segmentation"
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert (tmp_path / "run" / "metrics.json").is_file()
    report = (tmp_path / "run" / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 3  # best, median and worst overlays
    assert "worst case" in report and "best case" in report and "http" not in report


def test_centre_logits_keeps_the_val_median_in_the_bundle_and_centres_every_prediction(disc_folder, tmp_path):
    from medsight.data.seg_layouts import open_seg_dataset
    from medsight.inference.postprocess import centre_logits, median_logit
    from medsight.inference.segmenter import Segmenter
    from medsight.segmentation.pixel_scores import PixelScores

    out = tmp_path / "run"
    train_segmenter(_cfg(disc_folder, **{"segment.centre_logits": True, "train.epochs": 2}), out=out, progress=False)
    segmenter, uncentred = Segmenter(out / "model"), Segmenter(out / "model")
    uncentred.logit_median = None
    level = segmenter.bundle.segmentation["logit_median"]
    assert segmenter.logit_median == level and -12 < level < 0  # the median voxel is background
    dataset = open_seg_dataset(disc_folder)
    val = set(segmenter.bundle.provenance["split"]["val"])
    scores, raw_scores, medians = PixelScores(), PixelScores(), []
    for item in (item for item in dataset.items if item.case_id in val):
        sample, truth, roi = dataset.read(item)
        raw, probs = uncentred.probabilities(sample), segmenter.probabilities(sample)
        medians.append(median_logit(raw[1]))
        assert median_logit(probs[1]) == pytest.approx(level, abs=1e-3)
        np.testing.assert_allclose(probs, centre_logits(raw, level), atol=1e-6)
        scores.add(probs[1], truth, roi=roi)
        raw_scores.add(raw[1], truth, roi=roi)
    assert len(medians) == 2 and abs(medians[0] - medians[1]) > 0.01  # two cases, shifted by different amounts
    assert level == pytest.approx(np.mean(medians), abs=1e-2)  # the val cases' mean (kept as float16 meanwhile)
    # the threshold and the scores are those of the centred probabilities, not of the raw ones (how far
    # apart the two best thresholds lie depends on the CPU's rounding: 0.0016 on one machine, 0.0004 on
    # another, so the AUC below is what tells them apart)
    assert segmenter.thresholds[1] == pytest.approx(scores.best_threshold()[0], abs=2e-4)
    assert json.loads((out / "metrics.json").read_text())["auc"] == pytest.approx(scores.roc_auc(), abs=1e-6)
    assert abs(raw_scores.roc_auc() - scores.roc_auc()) > 5e-6


def test_centre_logits_for_more_than_one_foreground_class_is_a_config_error_and_writes_no_model(
        disc_folder, tmp_path) -> None:
    for mask in (disc_folder / "masks").iterdir():
        labels = (np.asarray(Image.open(mask)) > 0).astype(np.uint8)
        labels[:4, :4] = 2
        Image.fromarray(labels).save(mask)
    with pytest.raises(ConfigError, match=r"segment.centre_logits: centres a binary task's foreground logits, but "
                                          r"these masks have 3 classes \(background included\).*"
                                          r"set segment.centre_logits=false"):
        train_segmenter(_cfg(disc_folder, **{"segment.centre_logits": True}), out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "model").exists() and not (tmp_path / "run" / "metrics.csv").exists()


def test_resume_without_a_checkpoint_is_a_clear_error(disc_folder, tmp_path) -> None:
    from medsight.errors import MedsightError

    with pytest.raises(MedsightError, match="without --resume"):
        train_segmenter(_cfg(disc_folder, **{"train.epochs": 1}), out=tmp_path / "fresh", resume=True,
                        progress=False)
    assert not (tmp_path / "fresh" / "model").exists()


def test_an_empty_mask_set_is_a_clear_error_and_writes_no_model(disc_folder, tmp_path) -> None:
    from medsight.errors import DatasetError

    for mask in (disc_folder / "masks").iterdir():
        Image.fromarray(np.zeros((48, 48), np.uint8)).save(mask)
    with pytest.raises(DatasetError, match=r"every one of the 12 masks is empty.*check that the masks"):
        train_segmenter(_cfg(disc_folder), out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "model").exists()


def test_a_classifier_name_for_segmentation_is_a_config_error(disc_folder, tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"model.name=resnet18: is not a segmentation model.*unet"):
        train_segmenter(_cfg(disc_folder, **{"model.name": "resnet18"}), out=tmp_path / "run", progress=False)


def test_dynunet_with_deep_supervision_trains_and_its_bundle_segments(disc_folder, tmp_path) -> None:
    from medsight.inference.segmenter import Segmenter

    cfg = _cfg(disc_folder, **{"model.name": "dynunet", "model.kwargs": {"depth": 4},
                               "segment.deep_supervision": True, "segment.loss": "dice_focal",
                               "train.epochs": 1, "segment.steps_per_epoch": 2})
    result = train_segmenter(cfg, out=tmp_path / "run", progress=False)
    segmenter = Segmenter(result["bundle"])
    assert segmenter.bundle.model.kwargs["deep_supervision"] is True
    from medsight.io import read_image

    sample = read_image(next((disc_folder / "images").iterdir()))
    result = segmenter.segment_sample(sample)
    assert result.labels.shape == (48, 48) and result.probs.shape == (2, 48, 48)
    assert np.allclose(result.probs.sum(axis=0), 1.0, atol=1e-5)


def test_cross_validation_validates_every_case_once_and_reports_each_fold(disc_folder, tmp_path) -> None:
    """`medsight train --task segmentation --folds 3`: 3 runs whose validation cases are disjoint and cover
    all 12 cases, and a cv_metrics.json whose mean is the mean of the folds' own metrics.json."""
    from medsight.workflows.train import run_training

    cfg = _cfg(disc_folder, **{"data.folds": 3, "train.epochs": 2, "segment.steps_per_epoch": 5})
    text = run_training(cfg, out=tmp_path / "cv", progress=False)
    assert "cross-validation of 3 folds" in text and "cv_report.html" in text
    validated, fold_dice = [], []
    for fold in range(3):
        run = tmp_path / "cv" / f"fold{fold}"
        split = json.loads((run / "model" / "bundle.json").read_text())["provenance"]["split"]
        assert not set(split["train"]) & set(split["val"]) and len(split["train"]) + len(split["val"]) == 12
        validated += split["val"]
        fold_dice.append(json.loads((run / "metrics.json").read_text())["dice"])
    assert sorted(validated) == sorted(f"case{k:02d}" for k in range(12))
    summary = json.loads((tmp_path / "cv" / "cv_metrics.json").read_text())
    assert summary["n_per_fold"] == [4, 4, 4]
    assert summary["metrics"]["dice"]["per_fold"] == pytest.approx(fold_dice)
    assert summary["dice"] == pytest.approx(np.mean(fold_dice))
    assert {"auc", "f1", "hd95", "iou"} <= set(summary["metrics"])
    report = (tmp_path / "cv" / "cv_report.html").read_text()
    assert "fold 2" in report and "mean ± sd" in report


@pytest.mark.parametrize(("overrides", "words"), [
    ({"data.folds": 13}, r"data.folds=13: there are only 12 cases.*at most 12 folds"),
    ({"data.folds": 3, "data.fold": 3}, r"data.fold=3: there are 3 folds \(numbered 0 to 2\)"),
])
def test_impossible_folds_are_a_config_error_and_write_no_model(disc_folder, tmp_path, overrides, words) -> None:
    with pytest.raises(ConfigError, match=words):
        train_segmenter(_cfg(disc_folder, **overrides), out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "model").exists()


def test_resumed_cross_validation_continues_started_folds_and_starts_the_rest(disc_folder, tmp_path) -> None:
    """A CV run cut short (fold 1 never started) and resumed with more epochs: fold 0 goes on from its
    checkpoint (its metrics.csv grows from 1 row to 2), fold 1 trains from the start."""
    import shutil

    from medsight.workflows.train import run_training

    cv = tmp_path / "cv"
    run_training(_cfg(disc_folder, **{"data.folds": 2, "train.epochs": 1, "segment.steps_per_epoch": 3}),
                 out=cv, progress=False)
    shutil.rmtree(cv / "fold1")
    run_training(_cfg(disc_folder, **{"data.folds": 2, "train.epochs": 2, "segment.steps_per_epoch": 3}),
                 out=cv, resume=True, progress=False)
    epochs = [[row.split(",")[0] for row in (cv / f"fold{k}" / "metrics.csv").read_text().splitlines()[1:]]
              for k in range(2)]
    assert epochs == [["1", "2"], ["1", "2"]]
    assert json.loads((cv / "cv_metrics.json").read_text())["n_per_fold"] == [6, 6]


def test_data_fold_trains_that_fold_alone(disc_folder, tmp_path) -> None:
    """`--folds 3 --set data.fold=2`: one run in the run folder itself (no fold folders, no CV report),
    validated on fold 2's cases: the ones the full cross-validation gives fold 2."""
    from medsight.workflows.train import run_training

    cfg = _cfg(disc_folder, **{"data.folds": 3, "data.fold": 2, "train.epochs": 1, "segment.steps_per_epoch": 2})
    text = run_training(cfg, out=tmp_path / "one", progress=False)
    assert text.startswith("val: n=4")
    assert not (tmp_path / "one" / "fold0").exists() and not (tmp_path / "one" / "cv_metrics.json").exists()
    split = json.loads((tmp_path / "one" / "model" / "bundle.json").read_text())["provenance"]["split"]
    order = np.random.default_rng(0).permutation(12)
    assert sorted(split["val"]) == sorted(f"case{int(k):02d}" for k in np.array_split(order, 3)[2])


def test_cldice_with_loss_kwargs_trains_a_segmenter(disc_folder, tmp_path) -> None:
    cfg = _cfg(disc_folder, **{"segment.cldice": 0.3, "segment.loss_kwargs": {"batch": True}})
    assert train_segmenter(cfg, out=tmp_path / "run", progress=False)["best_val_dice"] > 0.7


def test_bad_loss_kwargs_are_a_config_error_naming_them_and_write_no_model(disc_folder, tmp_path) -> None:
    cfg = _cfg(disc_folder, **{"segment.loss": "tversky", "segment.loss_kwargs": {"gamma": 2}})
    with pytest.raises(ConfigError, match=r"segment.loss_kwargs=\{'gamma': 2\}: bad loss arguments .*"
                                          r"give only options of the tversky loss"):
        train_segmenter(cfg, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "model").exists()


def test_val_every_validates_every_nth_epoch_and_the_last(disc_folder, tmp_path) -> None:
    """`segment.val_every=2` over 5 epochs: val Dice at epochs 2, 4 and 5 (the last), none at 1 and 3;
    the best of the validated epochs is what the bundle ships."""
    result = train_segmenter(_cfg(disc_folder, **{"segment.val_every": 2}), out=tmp_path / "run", progress=False)
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    validated = [int(r["epoch"]) for r in rows if r["val_dice"] not in ("", "nan")]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5] and validated == [2, 4, 5]
    assert result["best_epoch"] in validated
    best = max(float(r["val_dice"]) for r in rows if int(r["epoch"]) in validated)
    assert result["best_val_dice"] == pytest.approx(best)


def test_a_time_limit_stop_validates_the_last_epoch_trained(disc_folder, tmp_path) -> None:
    """Stopped by the time limit after epoch 1 while validating only every 3rd epoch: epoch 1 is still
    validated, so the run ships a model."""
    cfg = _cfg(disc_folder, **{"segment.val_every": 3, "train.time_limit_min": 1e-6})
    result = train_segmenter(cfg, out=tmp_path / "run", progress=False)
    assert result["epochs_run"] == 1 and result["best_epoch"] == 1 and result["best_val_dice"] > 0
    assert (tmp_path / "run" / "model" / "weights.safetensors").is_file()

    # the limit counts the time already trained: resumed with the same limit, nothing more is trained
    weights = (tmp_path / "run" / "model" / "weights.safetensors").read_bytes()
    again = train_segmenter(cfg, out=tmp_path / "run", resume=True, progress=False)
    assert again["epochs_run"] == 1 and again["best_epoch"] == 1
    assert (tmp_path / "run" / "model" / "weights.safetensors").read_bytes() == weights
    longer = train_segmenter(_cfg(disc_folder, **{"segment.val_every": 3, "train.epochs": 3}), out=tmp_path / "run",
                             resume=True, progress=False)  # no limit now: it trains on
    assert longer["epochs_run"] == 3


@pytest.mark.parametrize(("anneal", "last_lr_share"), [(True, (0.0, 0.05)), (False, (0.9, 1.0))])
def test_a_run_its_time_limit_stops_ends_with_an_annealed_learning_rate(disc_folder, tmp_path, monkeypatch,
                                                                         anneal, last_lr_share) -> None:
    """A clock that advances 1 s a reading (4 readings an epoch) and a 1-minute limit stop a 100-epoch run
    after 16 epochs. The cosine follows the time spent, so the last epoch trains at under 5% of train.lr;
    with anneal_to_time_limit off it follows the epochs alone and is still above 90%."""
    readings = itertools.count()
    monkeypatch.setattr(loop, "time", SimpleNamespace(perf_counter=lambda: float(next(readings))))
    cfg = _cfg(disc_folder, **{"train.epochs": 100, "train.time_limit_min": 1.0, "segment.steps_per_epoch": 1,
                               "segment.val_every": 1000, "train.anneal_to_time_limit": anneal})
    result = train_segmenter(cfg, out=tmp_path / "run", progress=False)
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    rates = [float(r["lr"]) / 3e-3 for r in rows]
    assert result["epochs_run"] == len(rows) == 16
    assert rates[0] == pytest.approx(1.0)
    assert last_lr_share[0] <= rates[-1] <= last_lr_share[1]
    assert all(a >= b for a, b in itertools.pairwise(rates))
    assert (tmp_path / "run" / "model" / "weights.safetensors").is_file()


def test_a_channels_last_training_step_matches_a_plain_contiguous_one(tmp_path) -> None:
    """2D training runs channels-last for speed; its step must give the loss and weights of a plain one."""
    import torch

    from medsight.models import create_model
    from medsight.segmentation.losses import make_seg_loss

    x, y = torch.randn(4, 3, 48, 48), torch.randint(0, 2, (4, 1, 48, 48))
    loss_fn = make_seg_loss("dice_ce", num_classes=2)

    def fresh():
        torch.manual_seed(0)
        net = create_model("unet", in_channels=3, num_outputs=2, spatial_dims=2, base_features=8, norm="batch")
        return net, torch.optim.SGD(net.parameters(), lr=0.1)  # linear in the gradients (Adam would blow up
        # the rounding noise of the ~0 gradients of conv biases that batch norm cancels)

    plain, plain_optimizer = fresh()
    plain_loss = loss_fn(plain(x), y)
    plain_loss.backward()
    plain_optimizer.step()

    net, optimizer = fresh()
    net.to(memory_format=torch.channels_last)  # as train_segmenter does for 2D patches
    step = TrainStep(net, optimizer, loss_fn, _cfg(tmp_path).train, torch.device("cpu"),
                     SimpleNamespace(note=lambda text: None))
    loss, items = step(x, y)
    assert items == 4
    loss = float(loss)

    assert loss == pytest.approx(plain_loss.item(), rel=1e-5)
    assert net.state_dict().keys() == plain.state_dict().keys()
    for name, value in net.state_dict().items():
        torch.testing.assert_close(value, plain.state_dict()[name], rtol=1e-4, atol=1e-5)


def test_2d_training_runs_the_network_and_its_batches_channels_last(disc_folder, tmp_path, monkeypatch) -> None:
    import torch

    seen = []

    class Recording(TrainStep):
        def _loss(self, forward, x, y):
            convs = [m.weight for m in self.net.modules() if isinstance(m, torch.nn.Conv2d)]
            seen.append((x.is_contiguous(memory_format=torch.channels_last),
                         all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)))
            return super()._loss(forward, x, y)

    monkeypatch.setattr(loop, "TrainStep", Recording)
    train_segmenter(_cfg(disc_folder, **{"train.epochs": 1, "segment.steps_per_epoch": 2}), out=tmp_path / "run",
                    progress=False)
    assert seen == [(True, True), (True, True)]
    assert (tmp_path / "run" / "model" / "weights.safetensors").is_file()  # the bundle saves (contiguously)
