"""The classification plan: each decision from a fingerprint, the epochs from the budget, what the budget forced,
and the user's keys winning over the plan (issue 33, part 1)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from medsight.classification.plan import (
    MAX_MEMBERS,
    OVERHEAD,
    USABLE,
    make_classification_plan,
    read_classification_plan,
    write_classification_plan,
)
from medsight.config import load_config
from medsight.errors import ConfigError
from medsight.workflows.plan import apply_plan


def _fp(modality: str = "XR", *, n: int = 1000, classes=(500, 500), median=(28, 28), aspect=(1.0, 1.0),
        channels=None, colour: bool = False, intensity=None) -> dict:
    names = [f"c{k}" for k in range(len(classes))]
    return {
        "task": "classification", "n_images": n, "n_read": n,
        "class_counts": dict(zip(names, classes, strict=True)), "spatial_dims": len(median),
        "sizes": {"median": list(median), "min": list(median), "max": list(median), "p10": list(median),
                  "p90": list(median)},
        "aspect_ratio": {"median": aspect[0], "min": aspect[0], "max": aspect[1]},
        "spacing": None, "channels": channels or {"1": n}, "colour": colour, "bit_depth": {"uint8": n},
        "modality": {"value": modality, "source": "dicom", "reason": "the DICOM Modality tag"},
        "dicom_modalities": {modality: n}, "body_parts": {},
        "intensity": intensity or {"unit": "stored value", "region": "every pixel", "min": 0.0, "max": 255.0,
                                   "mean": 100.0, "std": 40.0, "median": 98.0, "p00_5": 3.0, "p99_5": 250.0},
        "duplicates": {"exact_groups": 0, "redundant_copies": 0, "near_groups": 0, "cross_split": 0,
                       "conflicting_labels": 0},
    }


def _constant(seconds: float):
    return lambda name, kwargs, size, channels, batch: seconds


CT_HU = {"unit": "HU", "region": "the body (HU > -500)", "min": -180.0, "max": 3000.0, "mean": 143.0, "std": 361.0,
         "median": 68.0, "p00_5": -130.0, "p99_5": 2704.0}


def test_ct_is_clipped_to_the_body_percentiles_in_hu_then_one_global_zscore() -> None:
    plan = make_classification_plan(_fp("CT", intensity=CT_HU), time_budget_min=10, seconds_per_image=_constant(1e-4))
    keys = plan.overrides()
    assert keys["preprocess.normalize"] == "dataset"
    assert keys["preprocess.intensity_clip"] == [-130.0, 2704.0]
    assert (keys["preprocess.intensity_mean"], keys["preprocess.intensity_std"]) == (143.0, 361.0)
    assert "clip to the body (HU > -500)'s 0.5 / 99.5 percentiles [-130, 2704]" in plan.notes["normalize"]
    assert not {"contrast", "gamma", "brightness", "color"} & set(plan.augment)  # HU carry the meaning
    assert "no intensity change" in plan.notes["augment"]


@pytest.mark.parametrize("modality", ["MR", "XR", "US"])
def test_other_modalities_are_zscored_per_image(modality: str) -> None:
    plan = make_classification_plan(_fp(modality), time_budget_min=10, seconds_per_image=_constant(1e-4))
    keys = plan.overrides()
    assert keys["preprocess.normalize"] == "zscore" and "preprocess.intensity_clip" not in keys
    assert plan.notes["normalize"].startswith("zscore: ")


def test_photographs_flip_both_ways_and_jitter_colour() -> None:
    plan = make_classification_plan(_fp("photo", channels={"3": 1000}, colour=True), time_budget_min=10,
                                    seconds_per_image=_constant(1e-4))
    assert plan.channels == 3 and plan.augment["flip_v"] == 0.5 and plan.augment["color"] == 0.1
    assert plan.tta == "auto" and plan.overrides()["eval.tta"] == "auto"


def test_mixed_channel_counts_are_stated() -> None:
    fp = _fp(channels={"1": 150, "3": 90, "4": 13})
    plan = make_classification_plan(fp, time_budget_min=10, seconds_per_image=_constant(1e-4))
    assert plan.channels == 1
    assert plan.notes["channels"] == ("1: mixed channel counts (1: 150, 3: 90, 4: 13); grey (1 channel), or grey "
                                      "stored as colour (R=G=B) -> 1 channel.")


def test_the_epochs_fill_the_budget_over_every_fold() -> None:
    seconds = 1e-3
    plan = make_classification_plan(_fp(), time_budget_min=5, seconds_per_image=_constant(seconds), n_pool=1000)
    assert plan.folds == 5 and plan.n_train_per_fold == 800  # 5 folds of 1000: 800 train, 200 validation
    epoch_s = seconds * OVERHEAD * (800 + 200 / 3)
    assert plan.epochs == math.floor(5 * 60 * USABLE / (5 * epoch_s)) == 44
    assert plan.gave_up == []
    keys = plan.overrides()
    assert keys["train.epochs"] == 44 and keys["data.folds"] == 5
    assert keys["train.time_limit_min"] == 1.5 and keys["train.anneal_to_time_limit"] is False  # 5 min / 5 x 1.5
    assert plan.seconds_per_image == seconds
    # 44 epochs, fewer than the plan's most: not even a second pass fits, so one member per fold
    assert plan.members_per_fold == 1 and keys["train.members_per_fold"] == 1
    assert plan.notes["members_per_fold"].startswith("1: 1 whole pass(es) of the 5 folds")


def _seconds_for_pass(pass_min: float, n_train: int = 800, n_val: int = 200, folds: int = 5) -> float:
    """The seconds per image at which one pass of ``folds`` folds of 60 epochs takes ``pass_min`` minutes."""
    return pass_min * 60 * USABLE / (folds * 60 * OVERHEAD * (n_train + n_val / 3))


@pytest.mark.parametrize(("budget", "pass_min", "members"), [(10, 4.0, 2), (10, 3.0, 3), (10, 1.0, MAX_MEMBERS),
                                                             (1e6, 1.0, MAX_MEMBERS)])
def test_members_per_fold_are_the_whole_passes_the_budget_holds(budget: float, pass_min: float,
                                                                members: int) -> None:
    plan = make_classification_plan(_fp(), time_budget_min=budget, seconds_per_image=_constant(_seconds_for_pass(
        pass_min)), n_pool=1000)
    assert plan.folds == 5 and plan.epochs == 60 and plan.gave_up == []
    assert plan.members_per_fold == members and plan.overrides()["train.members_per_fold"] == members
    passes = int(budget // pass_min)
    assert plan.notes["members_per_fold"].startswith(
        f"{members}: {passes} whole pass(es) of the 5 folds ({pass_min:.3g} min each) fit {budget:g} min, at most 4")
    assert "averages its fold's members' probabilities" in plan.notes["members_per_fold"]
    assert "0.909 for the four averaged" in plan.notes["members_per_fold"]  # the measured reason
    assert plan.time_limit_min == round(budget / (5 * members) * 1.5, 3)  # each member's share, x 1.5
    assert plan.notes["time_limit_min"].startswith(f"{plan.time_limit_min:g} per member: its share of the budget "
                                                   f"({budget:g} min / (5 fold(s) x {members} member(s))) x 1.5")
    assert plan.estimated_min == pytest.approx(members * pass_min, abs=1e-3)


def test_a_short_budget_drops_members_before_anything_else() -> None:
    """A pass that fits 1.5 times keeps one member and the plan's network, size and epochs."""
    plan = make_classification_plan(_fp(), time_budget_min=6, seconds_per_image=_constant(_seconds_for_pass(4.0)),
                                    n_pool=1000)
    assert plan.members_per_fold == 1 and plan.epochs == 60 and plan.gave_up == []
    assert plan.model_kwargs["width"] == 32 and plan.size == [28, 28] and plan.folds == 5
    assert plan.time_limit_min == round(6 / 5 * 1.5, 3)
    one_split = make_classification_plan(_fp(n=30_000, classes=(15_000, 15_000)), time_budget_min=1e6,
                                         seconds_per_image=_constant(1e-9))
    assert one_split.folds == 1 and one_split.members_per_fold == 1
    assert one_split.notes["members_per_fold"].startswith("1: one train/validation split")


def test_a_budget_too_small_says_what_it_gave_up() -> None:
    measured = []

    def timer(name, kwargs, size, channels, batch):
        measured.append((name, kwargs.get("width"), tuple(size)))
        return 1e-6 * math.prod(size) * kwargs.get("width", 32)  # cost grows with pixels and width

    plan = make_classification_plan(_fp(median=(256, 256), n=2000, classes=(1000, 1000)), time_budget_min=1,
                                    seconds_per_image=timer)
    assert plan.gave_up[0] == "input size [128, 128] -> [96, 96] to fit 1 min (0 epochs fitted, the plan wants 15)"
    assert any(g.startswith("compact_cnn width 32 -> 16") for g in plan.gave_up)
    assert plan.size == [32, 32] and "cut it to [32, 32] (see gave_up)" in plan.notes["size"]
    assert measured[0] == ("compact_cnn", 32, (128, 128))  # the first candidate is the data's own size


def test_a_budget_nothing_fits_ends_with_the_epochs_it_could_give() -> None:
    plan = make_classification_plan(_fp(), time_budget_min=0.01, seconds_per_image=_constant(1.0))
    assert plan.folds == 1 and plan.model_kwargs["width"] == 8 and plan.epochs == 1
    assert plan.gave_up[-1] == ("epochs: 0 fit 0.01 min even with the smallest plan (the plan wants 15); it trains 1: "
                                "raise --time-budget for a better model")
    assert "cross-validation 5 folds -> 1 train/validation split" in " ".join(plan.gave_up)


def test_folds_follow_the_data_size_and_the_smallest_class() -> None:
    many = make_classification_plan(_fp(n=30_000, classes=(15_000, 15_000)), time_budget_min=1e6,
                                    seconds_per_image=_constant(1e-9))
    assert many.folds == 1 and many.notes["folds"].startswith("1: 30,000 images, at least 20,000")
    assert "data.test_fraction" not in many.overrides()  # one split keeps the default held-out test split
    few = make_classification_plan(_fp(classes=(997, 3)), time_budget_min=10, seconds_per_image=_constant(1e-6))
    assert few.folds == 3 and "the smallest class has 3 images" in few.notes["folds"]
    assert few.overrides()["data.test_fraction"] == 0.0 and "No test split is carved out" in few.notes["folds"]
    assert few.class_weights == "balanced" and "332 x the smallest" in few.notes["class_weights"]
    one = make_classification_plan(_fp(), time_budget_min=10, seconds_per_image=_constant(1e-6),
                                   min_class_members=1)
    assert one.folds == 1


def test_non_square_data_keeps_its_aspect_and_the_size_its_shape() -> None:
    plan = make_classification_plan(_fp(median=(300, 200), aspect=(0.5, 0.9)), time_budget_min=1e6,
                                    seconds_per_image=_constant(1e-9))
    assert plan.size == [128, 84]  # 300 x 200 scaled to a longest side of 128, in multiples of 4
    assert plan.keep_aspect is True and "padded" in plan.notes["keep_aspect"]
    assert plan.epochs == 60  # a budget far beyond need stops at the most epochs the plan trains


def test_the_network_grows_with_the_data() -> None:
    small = make_classification_plan(_fp(n=500, classes=(250, 250)), time_budget_min=1e6,
                                     seconds_per_image=_constant(1e-9))
    assert (small.model_name, small.model_kwargs) == ("compact_cnn", {"width": 16, "dropout": 0.3})
    large = make_classification_plan(_fp(n=40_000, classes=(20_000, 20_000), median=(64, 64)), time_budget_min=1e6,
                                     seconds_per_image=_constant(1e-9))
    assert (large.model_name, large.model_kwargs) == ("resnet18", {"small_input": True})


def test_a_budget_that_is_not_positive_is_refused() -> None:
    with pytest.raises(ConfigError, match="--time-budget: is 0 minutes"):
        make_classification_plan(_fp(), time_budget_min=0, seconds_per_image=_constant(1e-3))


def test_the_plan_reads_back_as_written(tmp_path: Path) -> None:
    plan = make_classification_plan(_fp("CT", intensity=CT_HU), time_budget_min=3, seconds_per_image=_constant(2e-3))
    write_classification_plan(plan, tmp_path / "plan.json")
    assert read_classification_plan(tmp_path / "plan.json") == plan
    (tmp_path / "bad.json").write_text('{"patch_size": [64, 64]}')
    with pytest.raises(ConfigError, match="is not a classification plan"):
        read_classification_plan(tmp_path / "bad.json")


def test_the_users_keys_win_over_the_plan() -> None:
    plan = make_classification_plan(_fp("CT", intensity=CT_HU), time_budget_min=3, seconds_per_image=_constant(2e-3))
    user = load_config(overrides={"data.path": "x", "train.epochs": 2, "preprocess.size": [40, 40],
                                  "model.name": "classic_cnn"})
    cfg = apply_plan(user, plan)
    assert cfg.train.epochs == 2 and cfg.preprocess.size == [40, 40] and cfg.model.name == "classic_cnn"
    assert cfg.model.kwargs == {}  # the plan's compact_cnn kwargs do not follow the user's network
    assert cfg.train.time_limit_min is None  # the budget's safety net goes with the user's epochs
    assert cfg.preprocess.normalize == "dataset" and cfg.preprocess.intensity_clip == [-130.0, 2704.0]
    assert cfg.data.folds == plan.folds and cfg.eval.tta == plan.tta and cfg.data.path == "x"
    held_out = apply_plan(load_config(overrides={"data.path": "x", "data.test_fraction": 0.2}), plan)
    assert held_out.data.test_fraction == 0.2  # the user's own test split wins over the cross-validation's none
    plain = apply_plan(load_config(overrides={"data.path": "x"}), plan)
    assert plain.train.epochs == plan.epochs and plain.model.kwargs == plan.model_kwargs
    assert plain.train.time_limit_min == plan.time_limit_min and plain.train.anneal_to_time_limit is False


def test_the_users_members_per_fold_win_and_follow_the_users_folds_and_epochs() -> None:
    plan = make_classification_plan(_fp(), time_budget_min=10, seconds_per_image=_constant(_seconds_for_pass(3.0)),
                                    n_pool=1000)
    assert plan.members_per_fold == 3
    assert apply_plan(load_config(overrides={"data.path": "x"}), plan).train.members_per_fold == 3
    mine = apply_plan(load_config(overrides={"data.path": "x", "train.members_per_fold": 2}), plan)
    assert mine.train.members_per_fold == 2 and mine.data.folds == 5
    assert apply_plan(load_config(overrides={"data.path": "x", "train.members_per_fold": 1}), plan).train \
        .members_per_fold == 1
    # the plan's members are whole passes of its own folds and epochs: other folds or epochs keep one member
    assert apply_plan(load_config(overrides={"data.path": "x", "data.folds": 3}), plan).train.members_per_fold == 1
    assert apply_plan(load_config(overrides={"data.path": "x", "train.epochs": 5}), plan).train.members_per_fold == 1
    same = apply_plan(load_config(overrides={"data.path": "x", "data.folds": 5}), plan)
    assert same.train.members_per_fold == 3


def test_a_plan_written_before_members_per_fold_reads_back_with_one(tmp_path: Path) -> None:
    plan = make_classification_plan(_fp(), time_budget_min=3, seconds_per_image=_constant(2e-3))
    old = plan.model_dump(mode="json")
    old.pop("members_per_fold")
    (tmp_path / "plan.json").write_text(json.dumps(old))
    assert read_classification_plan(tmp_path / "plan.json").members_per_fold == 1
