"""Tests for the nnU-Net-style plan."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from medsight.data.fingerprint import fingerprint
from medsight.errors import ConfigError
from medsight.sample import Sample
from medsight.segmentation.plan import Plan, estimate_memory_mb, make_plan, read_plan, write_plan


def fp_of(spacings: list[list[float]], shapes: list[list[int]], modality: str = "MR") -> dict:
    """A fingerprint with only the geometry a plan reads (no pixels needed)."""
    return {
        "spacings": spacings,
        "shapes": shapes,
        "median_spacing": [float(v) for v in np.median(spacings, axis=0)],
        "modality": modality,
        "foreground_intensity": [],
        "labels": [0, 1],
    }


ISO_3D = fp_of([[1.0, 1.0, 1.0], [1.2, 1.2, 1.2], [0.8, 0.8, 0.8]], [[160, 200, 200], [130, 170, 170], [200, 250, 250]])
ANISO_3D = fp_of(
    [[z, 0.7, 0.7] for z in (5.0, 3.0, 4.0, 5.0, 6.0, 2.5, 5.0, 5.0, 4.5, 3.5)], [[30, 256, 256]] * 10
)
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bundles"
DRIVE_2D = fp_of([[1.0, 1.0]] * 4, [[584, 565]] * 4)


def ct_cases() -> list[tuple[Sample, np.ndarray]]:
    rng = np.random.default_rng(0)
    cases = []
    for n, spacing in ((16, 1.0), (20, 1.0), (24, 1.0)):
        image = rng.normal(-900, 30, (1, n, 16, 16)).astype(np.float32)
        label = np.zeros((n, 16, 16), np.uint8)
        label[4:10, 4:12, 4:12] = 1
        image[0][label > 0] = rng.normal(50, 25, int(label.sum()))
        cases.append((Sample(image, spacing=(spacing,) * 3, meta={"modality": "CT"}), label))
    return cases


def test_isotropic_ct_plan_uses_median_spacing_and_foreground_percentiles():
    cases = ct_cases()
    plan = make_plan(fingerprint(cases))
    fg = np.concatenate([s.array[0][lab > 0] for s, lab in cases]).astype(np.float64)
    assert plan.target_spacing == [1.0, 1.0, 1.0]
    norm = plan.normalization
    assert norm["scheme"] == "ct"
    assert norm["clip"] == pytest.approx([np.percentile(fg, 0.5), np.percentile(fg, 99.5)])
    assert norm["mean"] == pytest.approx(fg.mean())
    assert norm["std"] == pytest.approx(fg.std())
    assert plan.patch_size == [20, 16, 16]
    json.dumps(plan.to_json())


def test_isotropic_median_is_target():
    assert make_plan(ISO_3D).target_spacing == [1.0, 1.0, 1.0]


def test_anisotropic_low_res_axis_gets_10th_percentile():
    plan = make_plan(ANISO_3D)
    z = [s[0] for s in ANISO_3D["spacings"]]
    assert plan.target_spacing == pytest.approx([np.percentile(z, 10), 0.7, 0.7])
    assert plan.target_spacing[0] < np.median(z)
    assert any("Anisotropic" in note for note in plan.notes)


@pytest.mark.parametrize("fp", [ISO_3D, ANISO_3D, DRIVE_2D], ids=["iso3d", "aniso3d", "drive2d"])
def test_smaller_budget_never_gives_larger_patch(fp):
    budgets = [50, 200, 800, 2000, 8000, 30000]
    patches = [make_plan(fp, memory_budget_mb=b).patch_size for b in budgets]
    for small, large in zip(patches, patches[1:], strict=False):
        assert all(s <= g for s, g in zip(small, large, strict=True)), (small, large)
    assert math.prod(patches[0]) < math.prod(patches[-1])


@pytest.mark.parametrize("fp", [ISO_3D, ANISO_3D, DRIVE_2D], ids=["iso3d", "aniso3d", "drive2d"])
@pytest.mark.parametrize("budget", [50, 500, 2000, 16000])
def test_patch_divisible_fits_budget_and_keeps_bottleneck(fp, budget):
    plan = make_plan(fp, memory_budget_mb=budget)
    step = 2 ** plan.depth
    assert 1 <= plan.depth <= 5
    assert all(n % step == 0 for n in plan.patch_size)
    assert min(plan.patch_size) // step >= 4 or plan.depth == 1
    assert plan.batch_size >= 2
    assert plan.estimated_memory_mb <= budget
    expected = estimate_memory_mb(plan.patch_size, plan.base_features, plan.batch_size)
    assert plan.estimated_memory_mb == expected


def test_drive_like_data_gives_2d_plan():
    plan = make_plan(DRIVE_2D)
    assert plan.spatial_dims == 2
    assert plan.target_spacing == [1.0, 1.0]
    assert plan.patch_size == [512, 512]
    assert plan.base_features == 32
    assert plan.normalization == {"scheme": "zscore"}
    assert plan.depth == 5


def test_2d_plan_of_3d_data_uses_last_two_axes():
    plan = make_plan(ANISO_3D, spatial_dims=2)
    assert plan.spatial_dims == 2
    assert plan.target_spacing == [0.7, 0.7]
    assert len(plan.patch_size) == 2


def test_3d_plan_of_2d_data_errors():
    with pytest.raises(ConfigError, match="spatial_dims: is 3 for 2D data; use 2"):
        make_plan(DRIVE_2D, spatial_dims=3)


def test_overrides_replace_fields_and_are_noted():
    plan = make_plan(DRIVE_2D, overrides={"batch_size": 4, "patch_size": [256, 256]})
    assert plan.batch_size == 4
    assert plan.patch_size == [256, 256]
    assert plan.estimated_memory_mb == estimate_memory_mb([256, 256], 32, 4)
    assert any("Override: batch_size = 4" in note for note in plan.notes)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"patch_sise": [64, 64]}, r"overrides\.patch_sise: is not a plan field; use one of: .*patch_size"),
        ({"notes": []}, r"overrides\.notes: is not a plan field"),
        ({"patch_size": [100, 100]}, r"overrides\.patch_size: .*not divisible by 2\*\*depth = 32"),
    ],
)
def test_bad_overrides_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_plan(DRIVE_2D, overrides=overrides)


@pytest.mark.parametrize(
    ("fp", "kwargs", "message"),
    [
        ({"labels": [0]}, {}, "fingerprint: is missing median_spacing.*build it with"),
        (DRIVE_2D, {"memory_budget_mb": 0}, "memory_budget_mb: is 0; give a positive"),
        (DRIVE_2D, {"memory_budget_mb": 0.01}, "memory_budget_mb: .* does not fit even an 8-voxel patch.*; raise it"),
        ({**ISO_3D, "modality": "CT"}, {}, "fingerprint: is CT data without foreground intensity"),
    ],
)
def test_bad_inputs_error(fp, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        make_plan(fp, **kwargs)


def test_write_plan_round_trips(tmp_path):
    plan = make_plan(DRIVE_2D, label_names={0: "background", 1: "vessel"})
    path = tmp_path / "run" / "plan.json"
    write_plan(plan, path)
    assert json.loads(path.read_text()) == plan.to_json()
    assert json.loads(path.read_text())["label_names"] == {"0": "background", "1": "vessel"}
    assert read_plan(path) == plan


@pytest.mark.parametrize(("key", "value"), [("modality", object()), ("batch_size", "four"), ("patch_size", 64)])
def test_an_override_of_the_wrong_type_is_refused_when_planning(key, value):
    with pytest.raises(ConfigError, match=rf"overrides\.{key}=.*: is not a valid {key}"):
        make_plan(DRIVE_2D, overrides={key: value})


def test_plans_written_before_the_plan_was_typed_still_load(tmp_path):
    """A training run's plan.json had no label_names, ``medsight plan``'s had them; bundles keep the plan too."""
    old = {"spatial_dims": 2, "target_spacing": [1.0, 1.0], "median_shape_resampled": [32.0, 32.0],
           "normalization": {"scheme": "zscore"}, "patch_size": [32, 32], "depth": 3, "base_features": 32,
           "batch_size": 32, "estimated_memory_mb": 64.0, "memory_budget_mb": 2000.0, "modality": "other",
           "labels": [0, 1], "notes": ["Base features 32 (2D U-Net)."]}
    for written in (old, {**old, "label_names": {"0": "background", "1": "vessel"}}):
        (tmp_path / "plan.json").write_text(json.dumps(written, indent=2))
        plan = read_plan(tmp_path / "plan.json")
        assert plan.patch_size == [32, 32] and plan.to_json() == written
    for name in ("segmenter", "fold_ensemble"):
        stored = json.loads((FIXTURES / name / "bundle.json").read_text())["provenance"]["plan"]
        assert Plan.model_validate(stored).to_json() == stored
    (tmp_path / "plan.json").write_text('{"patch_size": [32, 32]}')
    with pytest.raises(ConfigError, match="plan.json: is not a plan"):
        read_plan(tmp_path / "plan.json")
