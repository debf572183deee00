"""The exponential moving average of the weights (``train.ema``), alone and in segmentation training."""

import pytest
import torch
from disc_images import write_disc_folder
from safetensors.torch import load_file

from medsight.errors import ConfigError, MedsightError
from medsight.training.weight_average import WeightAverage


def test_the_average_follows_the_decay_formula_with_its_warm_up():
    net = torch.nn.Linear(2, 1)
    with torch.no_grad():
        net.weight.fill_(0.0)
    average = WeightAverage(net, decay=0.9)
    expected = 0.0
    for step, value in enumerate([1.0, 1.0, 5.0, -2.0] + [3.0] * 96):
        with torch.no_grad():
            net.weight.fill_(value)
        decay = min(0.9, (1 + step) / (10 + step))  # 0.1, 0.18, 0.25, ..., 0.9 from step 81
        expected = decay * expected + (1 - decay) * value
        average.update(net)
    assert average.steps == 100 and average.current_decay() == 0.9
    assert average.network.weight.detach() == pytest.approx(torch.full((1, 2), expected), abs=1e-6)
    assert not average.network.weight.requires_grad and not average.network.training
    assert float(net.weight.detach()[0, 0]) == 3.0  # the trained net itself is untouched


def test_integer_buffers_are_copied_not_averaged_and_the_state_round_trips():
    net = torch.nn.BatchNorm1d(3)
    average = WeightAverage(net, decay=0.99)
    net.num_batches_tracked.fill_(7)
    average.update(net)
    assert int(average.network.num_batches_tracked) == 7
    again = WeightAverage(torch.nn.BatchNorm1d(3), decay=0.99)
    again.load_state_dict(average.state_dict())
    assert again.steps == 1 and int(again.network.num_batches_tracked) == 7


@pytest.mark.parametrize("decay", [1.0, -0.5, 0.0])
def test_a_decay_outside_zero_one_is_a_config_error(decay):
    with pytest.raises(ConfigError, match=r"train.ema=.*not a decay in \(0, 1\).*0.999"):
        WeightAverage(torch.nn.Linear(1, 1), decay=decay)


def _cfg(data, **overrides):
    from medsight.config import load_config

    base = {"task": "segmentation", "data.path": str(data), "model.name": "unet",
            "model.kwargs": {"base_features": 8}, "segment.patch_size": [48, 48], "segment.batch_size": 4,
            "segment.steps_per_epoch": 6, "train.lr": 3e-3, "train.epochs": 2, "train.ema": 0.9}
    return load_config(overrides={**base, **overrides})


def test_a_resumed_run_equals_an_unbroken_one(tmp_path):
    """Two epochs at once, and the same run stopped by its time limit after epoch 1 then --resumed: the
    same shipped weights (the average is checkpointed with its step count)."""
    from medsight.runtime.checkpoint import CHECKPOINT
    from medsight.segmentation.train import train_segmenter

    data = write_disc_folder(tmp_path / "discs")
    train_segmenter(_cfg(data), out=tmp_path / "whole", progress=False)
    stopped = train_segmenter(_cfg(data, **{"train.time_limit_min": 1e-6}), out=tmp_path / "split", progress=False)
    assert stopped["epochs_run"] == 1
    train_segmenter(_cfg(data), out=tmp_path / "split", resume=True, progress=False)
    whole = load_file(tmp_path / "whole" / "model" / "weights.safetensors")
    split = load_file(tmp_path / "split" / "model" / "weights.safetensors")
    assert whole.keys() == split.keys()
    assert max(float((whole[k].float() - split[k].float()).abs().max()) for k in whole) < 1e-5
    assert int(load_file(tmp_path / "whole" / CHECKPOINT)["ema.__steps__"]) == 12  # 2 epochs x 6 steps


def test_the_bundle_ships_the_average_and_resuming_with_another_setting_is_a_clear_error(tmp_path):
    """One epoch (so it is the best): the bundle's weights are the checkpoint's average, not the trained
    weights. Resuming that run with train.ema off is refused, and the run folder is left as it was."""
    from medsight.runtime.checkpoint import CHECKPOINT
    from medsight.segmentation.train import train_segmenter

    data = write_disc_folder(tmp_path / "discs")
    train_segmenter(_cfg(data, **{"train.epochs": 1}), out=tmp_path / "run", progress=False)
    shipped = load_file(tmp_path / "run" / "model" / "weights.safetensors")
    checkpoint = load_file(tmp_path / "run" / CHECKPOINT)
    assert all(torch.equal(shipped[k], checkpoint["ema." + k]) for k in shipped)
    assert not all(torch.equal(shipped[k], checkpoint["model." + k]) for k in shipped)
    before = (tmp_path / "run" / CHECKPOINT).read_bytes()
    with pytest.raises(MedsightError, match=r"has a weight average but train.ema is 0.*resume with the train.ema"):
        train_segmenter(_cfg(data, **{"train.ema": 0.0}), out=tmp_path / "run", resume=True, progress=False)
    assert (tmp_path / "run" / CHECKPOINT).read_bytes() == before
    train_segmenter(_cfg(data, **{"train.ema": 0.0}), out=tmp_path / "plain", progress=False)
    with pytest.raises(MedsightError, match=r"has no weight average but train.ema is 0.9.*resume with the train.ema"):
        train_segmenter(_cfg(data), out=tmp_path / "plain", resume=True, progress=False)
    assert load_file(tmp_path / "run" / "model" / "weights.safetensors").keys() == shipped.keys()
