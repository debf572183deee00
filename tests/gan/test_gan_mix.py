"""Mixing generated samples into training: counts, class proportions, val untouched, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medsight.config import RunConfig
from medsight.errors import BundleError, ConfigError


def _generator(folder: Path, *, labels: list[str], size: list[int], kind: str = "dcgan") -> Path:
    from medsight.models.generator_store import GeneratorInfo, build_generator, save_generator

    torch.manual_seed(0)
    net = {"width": 8, "latent_dim": 8} if kind == "dcgan" else {"width": 8}
    info = GeneratorInfo(kind=kind, size=size, channels=1, label_names=labels, net=net)
    return save_generator(folder, build_generator(info).state_dict(), info)


def _train_set(n0: int, n1: int):
    from medsight.classification.batches import TensorSet

    labels = torch.tensor([0] * n0 + [1] * n1)
    return TensorSet(torch.rand(n0 + n1, 1, 28, 28), labels, [f"real{i}" for i in range(n0 + n1)])


def _cfg(generator: Path | str, ratio: float = 0.5, normalize: str = "minmax") -> RunConfig:
    return RunConfig.model_validate({"preprocess": {"size": [28, 28], "normalize": normalize},
                                     "train": {"synthetic": str(generator), "synthetic_ratio": ratio}})


def test_class_quota_follows_the_training_proportions() -> None:
    from medsight.classification.synthetic import class_quota

    assert class_quota(np.array([0, 0, 0, 1]), 2, 6).tolist() == [5, 1]  # 4.5 / 1.5: the tie goes to class 0
    assert class_quota(np.array([0] * 147 + [1] * 399), 2, 546).tolist() == [147, 399]
    assert class_quota(np.array([0, 1, 2]), 3, 7).sum() == 7


def test_mix_adds_round_ratio_times_n_in_class_proportions(tmp_path: Path) -> None:
    from medsight.classification.synthetic import mix_synthetic

    gen = _generator(tmp_path / "g", labels=["a", "b"], size=[28, 28])
    train = _train_set(14, 6)
    mixed, note = mix_synthetic(train, _cfg(gen, ratio=0.5), class_names=["a", "b"])
    assert len(mixed) == 30 and note["n_synthetic"] == 10 and note["n_real"] == 20
    assert note["per_class"] == {"a": 7, "b": 3}
    assert mixed.labels[20:].tolist() == [0] * 7 + [1] * 3
    assert mixed.ids[:20] == train.ids and all(i.startswith("synthetic:") for i in mixed.ids[20:])
    torch.testing.assert_close(mixed.images[:20], train.images)
    synth = mixed.images[20:]
    assert synth.shape == (10, 1, 28, 28)
    assert synth.amax(dim=(1, 2, 3)).tolist() == pytest.approx([1.0] * 10)  # minmax like the real images
    zs, _ = mix_synthetic(train, _cfg(gen, ratio=0.5, normalize="zscore"), class_names=["a", "b"])
    assert zs.images[20:].mean(dim=(1, 2, 3)).abs().max() < 1e-4


@pytest.mark.parametrize(
    ("labels", "size", "kind", "match"),
    [
        (["x", "y"], [28, 28], "dcgan", r"labels \['x', 'y'\] differ"),
        (["a", "b"], [32, 32], "dcgan", r"size \[32, 32\] differs"),
        (["background", "foreground"], [32, 32], "pix2pix", "pix2pix generator"),
    ],
)
def test_generator_that_does_not_fit_the_run_is_a_config_error(tmp_path: Path, labels, size, kind, match) -> None:
    from medsight.classification.synthetic import mix_synthetic

    gen = _generator(tmp_path / "g", labels=labels, size=size, kind=kind)
    with pytest.raises(ConfigError, match=match):
        mix_synthetic(_train_set(4, 4), _cfg(gen), class_names=["a", "b"])


def test_zero_ratio_and_bad_folder_are_clear_errors(tmp_path: Path) -> None:
    from medsight.classification.synthetic import mix_synthetic

    gen = _generator(tmp_path / "g", labels=["a", "b"], size=[28, 28])
    with pytest.raises(ConfigError, match="synthetic_ratio"):
        mix_synthetic(_train_set(4, 4), _cfg(gen, ratio=0.0), class_names=["a", "b"])
    with pytest.raises(BundleError, match="not a generator folder"):
        mix_synthetic(_train_set(4, 4), _cfg(tmp_path / "nothing"), class_names=["a", "b"])
    (gen / "generator.safetensors").unlink()
    with pytest.raises(BundleError, match="generator.safetensors is missing"):
        mix_synthetic(_train_set(4, 4), _cfg(gen), class_names=["a", "b"])


def test_training_run_mixes_train_only_and_records_it(small_phantoms: Path, tmp_path: Path) -> None:
    from medsight.bundle import load_bundle
    from medsight.config import load_config
    from medsight.workflows.train import run_training

    gen = _generator(tmp_path / "g", labels=["normal", "nodule"], size=[32, 32])
    overrides = {"data.path": str(small_phantoms), "preprocess.size": [32, 32], "train.epochs": 1,
                 "eval.bootstrap": 50}
    plain = tmp_path / "plain"
    run_training(load_config(recipe="demo", overrides=overrides), out=plain, progress=False)
    mixed = tmp_path / "mixed"
    cfg = load_config(recipe="demo", overrides={**overrides, "train.synthetic": str(gen),
                                                "train.synthetic_ratio": 1.0})
    run_training(cfg, out=mixed, progress=False)
    note = load_bundle(mixed / "model", weights=False).provenance["synthetic"]
    n_real = load_bundle(plain / "model", weights=False).provenance["n_train"]
    assert note["n_real"] == n_real and note["n_synthetic"] == n_real
    assert load_bundle(mixed / "model", weights=False).provenance["n_train"] == 2 * n_real
    scored = [json.loads((d / "metrics.json").read_text()) for d in (plain, mixed)]
    assert scored[0]["split"] == scored[1]["split"] == "test"
    assert scored[0]["n"] == scored[1]["n"]  # the same real held-out cases, no generated one among them
