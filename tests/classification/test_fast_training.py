"""bfloat16 mixed precision on CPU (``train.cpu_amp``) and ``train.compile`` with its eager fallback.

Whether this CPU has native bf16 is patched in each test, so the results do not depend on the
machine the suite runs on (bf16 autocast runs everywhere, only slowly without native support).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from disc_images import write_disc_folder
from safetensors.torch import load_file

from medsight.classification.trainer import fit
from medsight.runtime import device as device_module
from medsight.runtime.device import autocast, cpu_bf16_active
from medsight.segmentation.train import train_segmenter

CPU = torch.device("cpu")


@pytest.fixture
def discs(tmp_path):
    """12 noisy 32x32 pictures of one bright disc each, with their masks."""
    return write_disc_folder(tmp_path / "discs", size=32, seed=3)


def _cfg(data, **overrides):
    from medsight.config import load_config

    base = {"task": "segmentation", "data.path": str(data), "model.name": "unet",
            "model.kwargs": {"base_features": 8, "depth": 3, "num_res_units": 1}, "segment.patch_size": [32, 32],
            "segment.batch_size": 4, "segment.steps_per_epoch": 10, "train.lr": 1e-2, "train.epochs": 6,
            "train.num_threads": 1, "eval.bootstrap": 0}
    return load_config(overrides={**base, **overrides})


def _weights(run):
    return load_file(run / "model" / "weights.safetensors")


def _native_bf16(monkeypatch, value: bool) -> None:
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: value)


def test_cpu_bf16_is_used_only_when_asked_and_native(monkeypatch) -> None:
    _native_bf16(monkeypatch, True)
    assert cpu_bf16_active(CPU, False) == (False, "")
    assert cpu_bf16_active(torch.device("cuda"), True) == (False, "")
    active, note = cpu_bf16_active(CPU, True)
    assert active and "bfloat16" in note
    with autocast(CPU, False, cpu_bf16=True):
        out = torch.nn.Conv2d(1, 2, 3)(torch.randn(1, 1, 8, 8))
    assert out.dtype == torch.bfloat16
    _native_bf16(monkeypatch, False)
    active, note = cpu_bf16_active(CPU, True)
    assert not active and "no native bfloat16" in note and "float32" in note
    assert isinstance(autocast(CPU, True, cpu_bf16=True), nullcontext)


def test_segmenter_learns_in_bf16_and_falls_back_to_fp32_without_native_bf16(discs, tmp_path, monkeypatch,
                                                                              caplog) -> None:
    plain = train_segmenter(_cfg(discs), out=tmp_path / "fp32", progress=False)
    _native_bf16(monkeypatch, True)
    bf16 = train_segmenter(_cfg(discs, **{"train.cpu_amp": True}), out=tmp_path / "bf16", progress=False)
    assert bf16["best_val_dice"] > 0.7 and plain["best_val_dice"] > 0.7
    assert abs(bf16["metrics"]["dice"] - plain["metrics"]["dice"]) < 0.1  # the same task learnt as well
    assert any((a - b).abs().max() > 1e-6 for a, b in zip(_weights(tmp_path / "bf16").values(),
                                                         _weights(tmp_path / "fp32").values(), strict=True))
    _native_bf16(monkeypatch, False)
    with caplog.at_level(logging.WARNING):
        train_segmenter(_cfg(discs, **{"train.cpu_amp": True}), out=tmp_path / "no_native", progress=False)
    assert "no native bfloat16" in caplog.text
    same = _weights(tmp_path / "no_native")
    assert all(torch.equal(same[k], v) for k, v in _weights(tmp_path / "fp32").items())  # float32, bit for bit


def test_a_failing_compile_falls_back_to_eager_with_the_same_result(discs, tmp_path, monkeypatch, caplog) -> None:
    train_segmenter(_cfg(discs), out=tmp_path / "eager", progress=False)

    def broken_compile(module):
        def fail(*args, **kwargs):
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")
        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    with caplog.at_level(logging.WARNING):
        result = train_segmenter(_cfg(discs, **{"train.compile": True}), out=tmp_path / "fallback", progress=False)
    assert "torch.compile failed (RuntimeError: InvalidCxxCompiler" in caplog.text
    assert "training in eager mode" in caplog.text
    assert result["epochs_run"] == 6
    eager = _weights(tmp_path / "eager")
    assert all(torch.equal(eager[k], v) for k, v in _weights(tmp_path / "fallback").items())


def test_compiled_training_learns_the_task(discs, tmp_path) -> None:
    """The real ``torch.compile`` (or, where it cannot compile, the eager fallback) trains as well as eager."""
    compiled = train_segmenter(_cfg(discs, **{"train.compile": True}), out=tmp_path / "compiled", progress=False)
    assert compiled["best_val_dice"] > 0.7
    assert compiled["metrics"]["n"] == 2  # round(0.15 * 12) validation cases


def test_classifier_trains_in_bf16_on_cpu(monkeypatch, tmp_path) -> None:
    from medsight.classification.batches import TensorSet
    from medsight.config import TrainConfig

    _native_bf16(monkeypatch, True)
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(64) % 2
    images = labels[:, None, None, None].float() * 1.5 + 0.5 * torch.randn(64, 1, 8, 8, generator=g)
    data = TensorSet(images, labels, [f"case{i}.png" for i in range(64)])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 2))
    cfg = TrainConfig(epochs=5, batch_size=16, lr=0.05, num_threads=1, early_stopping_metric="accuracy", cpu_amp=True)
    result = fit(model, data, data, cfg=cfg, head="softmax", num_classes=2, run_dir=tmp_path, progress=False)
    assert result.best_metric > 0.9
    assert all(np.isfinite(row["train_loss"]) for row in result.history)


def test_a_classifier_honours_train_compile_and_falls_back_to_eager_with_the_same_weights(monkeypatch, tmp_path,
                                                                                          caplog) -> None:
    """``train.compile`` reaches classification: the (here failing) compiled step is tried on the first batch,
    then the run trains eagerly and ends with exactly the weights of a run without compile."""
    from test_trainer import blobs, config, small_cnn

    train, val = blobs(64, 2, seed=1), blobs(16, 2, seed=2)
    eager = small_cnn(2)
    fit(eager, train, val, cfg=config(epochs=2), head="softmax", num_classes=2, run_dir=tmp_path / "eager",
        progress=False)
    compiled_modules = []

    def broken_compile(module):
        compiled_modules.append(module)

        def fail(*args, **kwargs):
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")
        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    fallback = small_cnn(2)
    with caplog.at_level(logging.WARNING):
        fit(fallback, train, val, cfg=config(epochs=2, compile=True), head="softmax", num_classes=2,
            run_dir=tmp_path / "fallback", progress=False)
    assert compiled_modules == [fallback]
    assert "torch.compile failed (RuntimeError: InvalidCxxCompiler" in caplog.text
    assert all(torch.equal(value, fallback.state_dict()[key]) for key, value in eager.state_dict().items())
