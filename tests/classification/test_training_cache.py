"""``data.cache: disk`` in a real training run: the second run reads every sample from the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medsight.bundle import load_bundle
from medsight.config import load_config
from medsight.workflows.train import run_training


def test_a_second_run_reads_the_disk_cache_and_trains_the_same(small_phantoms: Path, tmp_path: Path,
                                                               monkeypatch) -> None:
    from medsight.data import cache as cache_module

    cache_dir = tmp_path / "cache"
    overrides = {"data.path": str(small_phantoms), "preprocess.size": [32, 32], "train.epochs": 1,
                 "eval.bootstrap": 0, "data.cache": "disk", "data.cache_dir": str(cache_dir)}
    run_training(load_config(recipe="demo", overrides=overrides), out=tmp_path / "a", progress=False)
    entries = sorted(cache_dir.rglob("*.safetensors"))
    assert len(entries) == 80  # one per phantom image (40 per class), whatever its split

    built = []
    original = cache_module.SampleCache.put
    monkeypatch.setattr(cache_module.SampleCache, "put",
                        lambda self, *a, **k: built.append(1) or original(self, *a, **k))
    run_training(load_config(recipe="demo", overrides=overrides), out=tmp_path / "b", progress=False)
    assert built == []  # nothing decoded or preprocessed again
    assert sorted(cache_dir.rglob("*.safetensors")) == entries
    first = load_bundle(tmp_path / "a" / "model").state_dict
    second = load_bundle(tmp_path / "b" / "model").state_dict
    assert all(np.array_equal(first[k].numpy(), second[k].numpy()) for k in first)
