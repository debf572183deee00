"""The training loop: learning, exact resume, early stopping, time limit, sampling, losses, bad input."""

from __future__ import annotations

import csv
import itertools
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from medsight.classification.batches import TensorSet, class_counts, inverse_frequency_weights, iterate_batches
from medsight.classification.trainer import FitResult, fit, make_loss
from medsight.config import TrainConfig
from medsight.errors import ConfigError, DatasetError, MedsightError
from medsight.inference.classifier import CalibratedClassifier
from medsight.training import loop
from medsight.training.callbacks import Callback
from medsight.training.tracker import BestTracker, EarlyStopping


def blobs(n: int, num_classes: int, seed: int) -> TensorSet:
    """Class k is an 8x8 image of mean k plus noise: trivially separable."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    images = labels[:, None, None, None].float() * 1.5 + 0.5 * torch.randn(n, 1, 8, 8, generator=g)
    return TensorSet(images, labels, [f"case{i}.png" for i in range(n)])


def small_cnn(num_outputs: int, seed: int = 0) -> nn.Module:
    """Conv + batch-norm + dropout: every kind of state and randomness a real model has."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(4, num_outputs),
    )


def flip_and_noise(images: torch.Tensor, masks: None, *, generator: torch.Generator):
    """A stand-in for BatchAugment: random flips and noise drawn from the epoch generator."""
    flip = torch.rand(len(images), generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    return images + 0.1 * torch.randn(images.shape, generator=generator), masks


def config(**overrides) -> TrainConfig:
    base = {"epochs": 5, "batch_size": 16, "lr": 0.05, "num_threads": 1, "early_stopping_metric": "accuracy"}
    return TrainConfig(**{**base, **overrides})


def read_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


class CrashAfter(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        if epoch == self.epoch:
            raise KeyboardInterrupt(f"simulated crash after epoch {epoch}")


@pytest.mark.parametrize(("head", "num_classes", "outputs"), [("softmax", 3, 3), ("sigmoid", 2, 1)])
def test_learns_a_separable_task(tmp_path: Path, head: str, num_classes: int, outputs: int) -> None:
    train, val = blobs(96, num_classes, seed=1), blobs(48, num_classes, seed=2)
    model = small_cnn(outputs)
    result = fit(model, train, val, cfg=config(), head=head, num_classes=num_classes, run_dir=tmp_path,
                 progress=False)
    assert result.best_metric > 0.9
    assert result.history[result.best_epoch - 1]["accuracy"] == result.best_metric
    model.load_state_dict(result.best_state)
    probs = CalibratedClassifier(model, head=head).predict(val)
    assert probs.shape == (48, num_classes)
    assert probs.sum(axis=1) == pytest.approx(1.0, abs=1e-5)
    assert (probs.argmax(axis=1) == val.labels.numpy()).mean() == pytest.approx(result.best_metric)
    assert [row["epoch"] for row in read_rows(tmp_path)] == ["1", "2", "3", "4", "5"]
    assert any((tmp_path / "tensorboard").iterdir())


def test_killed_run_resumes_to_identical_weights_and_metrics(tmp_path: Path) -> None:
    train, val = blobs(70, 2, seed=1), blobs(24, 2, seed=2)
    cfg = config(optimizer="adamw", class_weights="balanced", balanced_sampling=True, label_smoothing=0.1,
                 warmup_epochs=1, early_stopping_metric="val_loss")
    common = {"cfg": cfg, "head": "softmax", "num_classes": 2, "augment": flip_and_noise, "progress": False}

    straight = small_cnn(2)
    expected = fit(straight, train, val, run_dir=tmp_path / "straight", **common)

    with pytest.raises(KeyboardInterrupt):
        fit(small_cnn(2), train, val, run_dir=tmp_path / "killed", callbacks=[CrashAfter(2)], **common)
    assert len(read_rows(tmp_path / "killed")) == 2
    torch.manual_seed(12345)  # the caller's RNG state must not matter
    resumed = small_cnn(2, seed=99)  # different initial weights: all must come from the checkpoint
    result = fit(resumed, train, val, run_dir=tmp_path / "killed", resume=True, **common)

    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    for key, value in expected.best_state.items():
        assert torch.equal(value, result.best_state[key]), key
    def untimed(run: str) -> list[dict[str, str]]:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in read_rows(tmp_path / run)]

    assert untimed("killed") == untimed("straight")
    assert result.epochs_run == 5 and result.best_epoch == expected.best_epoch


def test_fresh_start_replaces_an_old_run_and_resume_needs_a_checkpoint(tmp_path: Path) -> None:
    train, val = blobs(32, 2, seed=1), blobs(16, 2, seed=2)
    common = {"head": "softmax", "num_classes": 2, "run_dir": tmp_path, "progress": False}
    with pytest.raises(MedsightError, match="no checkpoint here") as info:
        fit(small_cnn(2), train, val, cfg=config(epochs=1), resume=True, **common)
    assert "last.safetensors" in str(info.value) and "without --resume" in str(info.value)
    fit(small_cnn(2), train, val, cfg=config(epochs=3), **common)
    fit(small_cnn(2), train, val, cfg=config(epochs=1), **common)
    assert [row["epoch"] for row in read_rows(tmp_path)] == ["1"]


def test_early_stopping_stops_after_patience_epochs_without_improvement(tmp_path: Path) -> None:
    # lr so small that every update rounds away: the weights, hence accuracy, never change
    train, val = blobs(32, 2, seed=1), blobs(16, 2, seed=2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    cfg = config(epochs=10, optimizer="sgd", momentum=0.0, lr=1e-30, weight_decay=0.0, patience=3)
    result = fit(model, train, val, cfg=cfg, head="softmax", num_classes=2, run_dir=tmp_path, progress=False)
    assert result.best_epoch == 1
    assert result.epochs_run == 4  # epoch 1 is best, epochs 2-4 are three without improvement
    assert result.stopped_early and "early stopping" in result.stop_reason
    assert len(read_rows(tmp_path)) == 4
    again = fit(model, train, val, cfg=cfg, head="softmax", num_classes=2, run_dir=tmp_path, resume=True,
                progress=False)
    assert again.epochs_run == 4 and again.stopped_early  # a finished run does not train on


def test_time_limit_stops_after_the_epoch_that_passes_it(tmp_path: Path) -> None:
    train, val = blobs(32, 2, seed=1), blobs(16, 2, seed=2)
    result = fit(small_cnn(2), train, val, cfg=config(time_limit_min=1e-9), head="softmax", num_classes=2,
                 run_dir=tmp_path, progress=False)
    assert result.epochs_run == 1
    assert result.stopped_early and "time limit" in result.stop_reason
    assert result.best_state and result.best_epoch == 1


def test_under_ddp_every_rank_stops_when_rank_zero_says_so(tmp_path: Path, monkeypatch) -> None:
    """A rank whose own clock is under the time limit still stops after the epoch rank 0's clock (the
    broadcast seconds) passed it."""
    from medsight.runtime import distributed

    rank_zero_seconds = 3600.0
    monkeypatch.setattr(distributed, "broadcast", lambda obj: rank_zero_seconds if isinstance(obj, float) else obj)
    train, val = blobs(32, 2, seed=1), blobs(16, 2, seed=2)
    result = fit(small_cnn(2), train, val, cfg=config(epochs=3, time_limit_min=30), head="softmax", num_classes=2,
                 run_dir=tmp_path, progress=False)
    assert result.epochs_run == 1 and result.stop_reason == "time limit of 30 min reached"


def test_a_fit_its_time_limit_stops_ends_with_an_annealed_learning_rate(tmp_path: Path, monkeypatch) -> None:
    """A clock that advances 1 s a reading and a 30-second limit stop a 100-epoch cosine run after a few
    epochs; the rate follows the time spent, so the last epoch trains at under 10% of train.lr
    (by epochs alone it would still be above 95%)."""
    readings = itertools.count()
    monkeypatch.setattr(loop, "time", SimpleNamespace(perf_counter=lambda: float(next(readings))))
    train, val = blobs(32, 2, seed=1), blobs(16, 2, seed=2)
    result = fit(small_cnn(2), train, val, cfg=config(epochs=100, time_limit_min=0.5), head="softmax", num_classes=2,
                 run_dir=tmp_path, progress=False)
    rates = [row["lr"] / 0.05 for row in result.history]
    assert 3 <= result.epochs_run < 100 and "time limit" in result.stop_reason
    assert rates[0] == pytest.approx(1.0) and rates[-1] < 0.1
    assert all(a >= b for a, b in itertools.pairwise(rates))


@pytest.mark.parametrize(
    ("metric", "values", "patience", "best_epoch", "stop_epoch"),
    [
        ("auc", [0.6, 0.7, 0.7, 0.8, 0.75, 0.79, 0.9], 2, 4, 6),
        ("val_loss", [1.0, 0.9, 0.95, 0.91, 0.92], 3, 2, 5),
        ("auc", [math.nan, 0.5, 0.4], 1, 2, 3),
        ("auc", [0.5, 0.4, 0.3, 0.2], 0, 1, None),
    ],
)
def test_early_stopping_bookkeeping(metric, values, patience, best_epoch, stop_epoch) -> None:
    tracker = BestTracker(metric)
    stopper = EarlyStopping(tracker, patience)
    stopped_at = None
    for epoch, value in enumerate(values, 1):
        tracker.update(epoch, value)
        if stopper.should_stop:
            stopped_at = epoch
            break
    assert tracker.best_epoch == best_epoch
    assert stopped_at == stop_epoch


def test_balanced_sampling_evens_out_class_counts() -> None:
    labels = torch.tensor([0] * 900 + [1] * 100)
    data = TensorSet(torch.zeros(1000, 1, 2, 2), labels, [str(i) for i in range(1000)])
    weights = inverse_frequency_weights(labels, 2)
    assert weights.tolist() == pytest.approx([1000 / 1800, 5.0])
    g = torch.Generator().manual_seed(0)
    plain = torch.cat([y for _, y in iterate_batches(data, 64, shuffle=True, generator=g)])
    assert class_counts(plain, 2).tolist() == [900, 100]
    balanced = torch.cat([
        y for _, y in iterate_batches(data, 64, shuffle=True, generator=g, sampler_weights=weights[labels])
    ])
    assert len(balanced) == 1000
    assert 440 < class_counts(balanced, 2)[1] < 560  # 500 expected; binomial sd ~16


def test_drop_last_skips_only_the_short_final_batch() -> None:
    data = TensorSet(torch.zeros(10, 1, 2, 2), torch.zeros(10, dtype=torch.long), [str(i) for i in range(10)])
    sizes = [len(y) for _, y in iterate_batches(data, 4, shuffle=False, generator=None, drop_last=True)]
    assert sizes == [4, 4]
    assert [len(y) for _, y in iterate_batches(data, 4, shuffle=False, generator=None)] == [4, 4, 2]


@pytest.mark.parametrize(
    ("head", "logits", "expected"),
    [
        # CE per case: log(1 + e^-2) = 0.1269 (label 0), log(1 + e^2) = 2.1269 (label 1); weights 1 and 3
        ("softmax", [[2.0, 0.0], [2.0, 0.0]], (0.1269 + 3 * 2.1269) / 4),
        # BCE: label 0 -> log(1 + e^2); label 1 -> pos_weight 3 * log(1 + e^-2); plain mean
        ("sigmoid", [[2.0], [2.0]], (2.1269 + 3 * 0.1269) / 2),
    ],
)
def test_class_weighted_losses(head: str, logits, expected: float) -> None:
    loss = make_loss(head, 0.0, torch.tensor([1.0, 3.0]))
    assert float(loss(torch.tensor(logits), torch.tensor([0, 1]))) == pytest.approx(expected, abs=1e-3)


def test_label_smoothing_pulls_binary_targets_towards_one_half() -> None:
    loss = make_loss("sigmoid", 0.2, None)  # target 1 -> 0.9; at logit 0 the loss is log 2 for any target
    assert float(loss(torch.zeros(2, 1), torch.tensor([0, 1]))) == pytest.approx(math.log(2), abs=1e-6)
    # the smoothed target's own logit (log 9) minimises the loss
    assert float(loss(torch.full((1, 1), math.log(9)), torch.tensor([1]))) < float(
        loss(torch.full((1, 1), 5.0), torch.tensor([1]))
    )


@pytest.mark.parametrize(
    ("change", "error", "words"),
    [
        ({"labels": 5}, DatasetError, ["case3.png", "outside 0..1", "check the labels"]),
        ({"head": "sigmoid", "num_classes": 3}, ConfigError, ["needs 2 classes", "head: softmax"]),
        ({"metric": "dice"}, ConfigError, ["early_stopping_metric=dice", "choose one of"]),
        ({"outputs": 3}, ConfigError, ["(N, 2)", "num_outputs=2"]),
        ({"val_size": 1}, DatasetError, ["validation split has 1", "at least 2"]),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path: Path, change: dict, error: type, words: list[str]) -> None:
    num_classes = change.get("num_classes", 2)
    train, val = blobs(16, 2, seed=1), blobs(change.get("val_size", 8), 2, seed=2)
    if "labels" in change:
        train.labels[3] = change["labels"]
    cfg = config(epochs=1, early_stopping_metric=change.get("metric", "auc"))
    with pytest.raises(error) as info:
        fit(small_cnn(change.get("outputs", 2)), train, val, cfg=cfg, head=change.get("head", "softmax"),
            num_classes=num_classes, run_dir=tmp_path, progress=False)
    for word in words:
        assert word in str(info.value)


def test_device_helpers_on_a_cpu_machine(monkeypatch) -> None:
    from contextlib import nullcontext

    from medsight.runtime.device import autocast, grad_scaler, pick_device, set_threads

    cpu = pick_device("cpu")
    assert cpu.type == "cpu"
    assert isinstance(autocast(cpu, enabled=True), nullcontext)
    assert not grad_scaler(cpu, enabled=True).is_enabled()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto").type == "cpu"
    with pytest.raises(ConfigError, match="CUDA is not available") as info:
        pick_device("cuda")
    assert "use auto or cpu" in str(info.value)
    with pytest.raises(ConfigError, match="not a device name"):
        pick_device("gpu0")
    before = torch.get_num_threads()
    try:
        set_threads(0)
        assert torch.get_num_threads() == len(os.sched_getaffinity(0))
    finally:
        torch.set_num_threads(before)


def test_a_resumed_fit_counts_the_time_trained_before_against_its_limit(tmp_path: Path, monkeypatch) -> None:
    """With a clock that advances 1 s a reading: a 30 s limit stops the run after n epochs; resumed
    with the same limit it trains nothing more; resumed with a 60 s limit it stops once 60 s are
    spent counting from the start of the run (about 2n epochs), not 60 s after the resume (3n)."""
    def fresh_clock() -> None:
        readings = itertools.count()
        monkeypatch.setattr(loop, "time", SimpleNamespace(perf_counter=lambda: float(next(readings))))

    train, val = blobs(32, 2, seed=1), blobs(16, 2, seed=2)
    model = small_cnn(2)

    def run(limit_min: float | None, resume: bool) -> FitResult:
        fresh_clock()
        return fit(model, train, val, cfg=config(epochs=100, time_limit_min=limit_min), head="softmax",
                   num_classes=2, run_dir=tmp_path, resume=resume, progress=False)

    first = run(0.5, resume=False)
    n = first.epochs_run
    assert 2 <= n < 100 and "time limit of 0.5 min" in first.stop_reason
    again = run(0.5, resume=True)
    assert again.epochs_run == n and "time limit of 0.5 min" in again.stop_reason  # nothing more trained
    longer = run(1.0, resume=True)  # twice the limit: about twice the epochs (a fresh 60 s: three times)
    assert n < longer.epochs_run <= 2 * n and "time limit of 1 min" in longer.stop_reason
