"""The preprocessed-sample cache: hits after the first read, keys that follow the file and the
preprocessing, atomic disk entries, corrupt entries rebuilt, and the same tensors as without it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsight.classification.prepare import load_tensors
from medsight.config import PreprocessConfig, load_config
from medsight.data import cache as cache_module
from medsight.data.cache import SampleCache, cache_from_config, clear_memory_cache, source_identity
from medsight.data.layouts import open_dataset
from medsight.errors import ConfigError

PREP = PreprocessConfig(size=[16, 16], normalize="minmax")


@pytest.fixture
def phantoms(small_phantoms):
    return open_dataset(small_phantoms)


@pytest.fixture(autouse=True)
def _empty_memory_cache():
    clear_memory_cache()
    yield
    clear_memory_cache()


def _load(ds, cache, prep=PREP):
    tensors, bad = load_tensors(ds, np.arange(12), prep, progress=False, cache=cache)
    assert bad == []
    return tensors


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_second_read_hits_and_gives_the_same_tensors(phantoms, tmp_path, mode):
    plain = _load(phantoms, None)
    first = SampleCache(mode, tmp_path / "cache")
    cold = _load(phantoms, first)
    assert first.stats == {"hits": 0, "misses": 12, "rebuilt": 0}
    second = SampleCache(mode, tmp_path / "cache")  # a new cache object: a later fold, or (disk) a later run
    warm = _load(phantoms, second)
    assert second.stats == {"hits": 12, "misses": 0, "rebuilt": 0}
    assert cold.ids == warm.ids == plain.ids
    assert np.array_equal(warm.images.numpy(), plain.images.numpy())
    assert np.array_equal(warm.labels.numpy(), plain.labels.numpy())
    if mode == "disk":
        assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 12
        assert not list((tmp_path / "cache").rglob("*.tmp"))  # no staging file left behind
    else:
        assert not (tmp_path / "cache").exists()
        assert clear_memory_cache() == 12


def test_the_key_changes_with_the_preprocessing_and_the_file(phantoms, tmp_path):
    cache = SampleCache("memory")
    path = phantoms.items[0].source
    key = cache.key([path], PREP, kind="classify")
    assert cache.key([path], PREP, kind="classify") == key
    assert cache.key([path], PREP.model_copy(update={"size": [32, 32]}), kind="classify") != key
    assert cache.key([path], PREP.model_copy(update={"normalize": "zscore"}), kind="classify") != key
    assert cache.key([path], PREP, kind="seg-case") != key
    assert cache.key([path], PREP, kind="classify", part="train/1") != key
    copy = tmp_path / "copy.png"
    copy.write_bytes(Path(path).read_bytes())
    assert source_identity(copy) == source_identity(path)  # a small file is keyed by its content
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(copy)
    assert source_identity(copy) != source_identity(path)
    assert source_identity(tmp_path / "gone.png") == f"missing:{tmp_path / 'gone.png'}"


def test_a_large_file_is_keyed_by_size_and_modification_time(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "CONTENT_HASH_LIMIT", 0)
    path = tmp_path / "big.bin"
    path.write_bytes(b"x" * 100)
    before = source_identity(path)
    assert before.startswith("stat:") and ":100:" in before
    os.utime(path, ns=(1, 1_000_000_000))
    assert source_identity(path) != before


def test_an_edited_image_is_read_again_not_served_stale(tmp_path):
    folder = tmp_path / "set"
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
        for k in range(2):
            Image.fromarray(np.full((8, 8), 40 * k + 10, np.uint8)).save(folder / name / f"{k}.png")
    ds = open_dataset(folder)
    cache = SampleCache("disk", tmp_path / "cache")
    load_tensors(ds, np.arange(4), PREP, progress=False, cache=cache)
    grey = np.zeros((8, 8), np.uint8)
    grey[:, 4:] = 200
    Image.fromarray(grey).save(ds.items[0].source)
    tensors, _ = load_tensors(ds, np.arange(4), PREP, progress=False, cache=cache)
    assert cache.stats["hits"] == 3 and cache.stats["misses"] == 5
    assert tensors.images[0, 0, 0, 0] == 0.0 and tensors.images[0, 0, 0, -1] == 1.0  # the new picture


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_a_corrupt_disk_entry_is_rebuilt(phantoms, tmp_path, damage):
    plain = _load(phantoms, None)
    _load(phantoms, SampleCache("disk", tmp_path / "cache"))
    entry = sorted((tmp_path / "cache").rglob("*.safetensors"))[3]
    data = entry.read_bytes()
    entry.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00" * len(data), "empty": b""}[damage])
    cache = SampleCache("disk", tmp_path / "cache")
    tensors = _load(phantoms, cache)
    assert cache.stats == {"hits": 11, "misses": 1, "rebuilt": 1}
    assert np.array_equal(tensors.images.numpy(), plain.images.numpy())
    again = SampleCache("disk", tmp_path / "cache")
    _load(phantoms, again)
    assert again.stats == {"hits": 12, "misses": 0, "rebuilt": 0}  # the rebuilt entry is whole


def test_entries_keep_arrays_of_every_dtype_and_their_record(tmp_path):
    cache = SampleCache("disk", tmp_path)
    arrays = {"image": np.arange(6, dtype=np.float32).reshape(1, 2, 3), "labels": np.array([[0, 2]], np.int64),
              "roi": np.array([True, False])}
    cache.put("k" * 64, arrays, {"spacing": [0.5, 0.5], "meta": {"format": "png"}})
    entry = SampleCache("disk", tmp_path).get("k" * 64)
    assert entry is not None and entry.meta == {"spacing": [0.5, 0.5], "meta": {"format": "png"}}
    for name, value in arrays.items():
        assert entry.arrays[name].dtype == value.dtype and np.array_equal(entry.arrays[name], value)


def test_an_unreadable_file_is_not_cached_and_still_reported(tmp_path):
    folder = tmp_path / "set"
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
        Image.fromarray(np.full((8, 8), 9, np.uint8)).save(folder / name / "ok.png")
    (folder / "a" / "broken.png").write_bytes(b"not a png")
    ds = open_dataset(folder)
    cache = SampleCache("memory")
    tensors, bad = load_tensors(ds, np.arange(3), PREP, progress=False, on_bad_file="skip", cache=cache)
    assert len(tensors) == 2 and [b["path"] for b in bad] == [str(folder / "a" / "broken.png")]
    assert clear_memory_cache() == 2


def test_bad_cache_settings_say_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="use none, memory or disk"):
        SampleCache("ram")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"cannot be created.*choose a writable folder"):
        SampleCache("disk", blocker / "cache")


def test_cache_from_config_follows_data_cache(tmp_path):
    cfg = load_config(recipe="demo")
    assert cache_from_config(cfg.data) is None
    disk = cache_from_config(cfg.data.model_copy(update={"cache": "disk", "cache_dir": str(tmp_path / "c")}))
    assert disk is not None and disk.mode == "disk" and disk.folder == tmp_path / "c"


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_segmentation_cases_come_from_the_cache_unchanged(tmp_path, mode):
    from medsight.data.seg_layouts import open_seg_dataset
    from medsight.segmentation.cases import read_cases

    root = tmp_path / "seg"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        mask = np.zeros((20, 24), np.uint8)
        mask[5 + k : 12, 4:10] = 1
        Image.fromarray((rng.uniform(0, 255, (20, 24))).astype(np.uint8)).save(root / "images" / f"c{k}.png")
        Image.fromarray(mask * 255).save(root / "masks" / f"c{k}.png")
    overrides = {"task": "segmentation", "data.path": str(root), "segment.patch_size": [16, 16],
                 "preprocess.clahe": True, "data.cache": mode, "data.cache_dir": str(tmp_path / "cache")}
    dataset = open_seg_dataset(root)
    plain_cases, plain_stepped = read_cases(dataset, load_config(overrides={**overrides, "data.cache": "none"}),
                                             False)
    cfg = load_config(overrides=overrides)
    read_cases(dataset, cfg, False)
    cases, stepped = read_cases(dataset, cfg, False)  # the second read comes from the cache
    for (cid, sample, labels, roi), (pid, psample, plabels, proi) in zip(cases, plain_cases, strict=True):
        assert cid == pid and roi is None and proi is None
        assert np.array_equal(sample.array, psample.array) and np.array_equal(labels, plabels)
        assert sample.spacing == psample.spacing and np.allclose(sample.affine, psample.affine)
        assert sample.meta == psample.meta
    for s, p in zip(stepped, plain_stepped, strict=True):
        assert np.array_equal(s.array, p.array)
    if mode == "disk":
        assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 3
        without_clahe = load_config(overrides={**overrides, "preprocess.clahe": False})
        read_cases(dataset, without_clahe, False)
        assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 6  # other steps, other entries
    else:
        assert clear_memory_cache() == 3


def test_a_failed_disk_write_warns_and_keeps_the_sample(phantoms, tmp_path, monkeypatch):
    import safetensors.numpy

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.numpy, "save_file", full_disk)
    plain = _load(phantoms, None)
    with pytest.warns(UserWarning, match="cannot write a cache entry.*No space left"):
        tensors = _load(phantoms, SampleCache("disk", tmp_path / "cache"))
    assert np.array_equal(tensors.images.numpy(), plain.images.numpy())
    assert not list((tmp_path / "cache").rglob("*.safetensors")) and not list((tmp_path / "cache").rglob("*.tmp"))
