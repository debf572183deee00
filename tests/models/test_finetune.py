"""Fine-tuning: freezing policies (zero gradients where frozen), backbone LR, gradual unfreezing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from medsight.config import TrainConfig
from medsight.errors import ConfigError
from medsight.models import create_model
from medsight.models.freezing import blocks, frozen_units, parameter_groups
from medsight.training.optim import build_optimizer
from medsight.training.unfreezing import GradualUnfreeze, setup_finetuning


def compact(**kwargs):
    return create_model("compact_cnn", in_channels=1, num_outputs=2, spatial_dims=2, width=4, **kwargs)


def grads_after_step(model) -> dict[str, torch.Tensor | None]:
    model.train()
    model(torch.randn(4, 1, 16, 16)).sum().backward()
    return {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize(("name", "kwargs", "head", "first_blocks"), [
    ("compact_cnn", {"width": 4}, "head", ["features.stage1", "features.stage2"]),
    ("classic_cnn", {}, "classifier", ["features.conv1", "features.conv2"]),
    ("resnet18", {"small_input": True}, "fc", ["conv1", "bn1"]),
    ("densenet121", {"small_input": True}, "class_layers", ["features.conv0", "features.norm0"]),
])
def test_blocks_and_backbone_of_each_classifier(name: str, kwargs: dict, head: str, first_blocks: list) -> None:
    model = create_model(name, in_channels=1, num_outputs=2, spatial_dims=2, **kwargs)
    names = blocks(model)
    assert names[:2] == first_blocks
    assert names[-1] == head
    frozen = frozen_units(model, "backbone")
    trainable = {n for n, p in model.named_parameters()} - {
        n for n, _ in model.named_parameters() if any(n.startswith(f"{u}.") for u in frozen)}
    last_linear = {"compact_cnn": "head", "classic_cnn": "classifier.4", "resnet18": "fc",
                   "densenet121": "class_layers.out"}[name]
    assert trainable == {f"{last_linear}.weight", f"{last_linear}.bias"}


def test_backbone_freeze_gives_zero_gradients_and_keeps_batchnorm_statistics() -> None:
    torch.manual_seed(0)
    model = compact()
    setup_finetuning(model, TrainConfig(freeze="backbone"))
    bn = model.features.stage1[1]
    running = bn.running_mean.clone()
    grads = grads_after_step(model)
    assert grads["head.weight"] is not None and grads["head.weight"].abs().sum() > 0
    frozen = [n for n in grads if not n.startswith("head.")]
    assert len(frozen) == 18  # 6 convolutions, 6 BatchNorm weights and biases
    assert all(grads[n] is None for n in frozen)
    assert not bn.training  # model.train() was called, the frozen BatchNorm stayed in eval mode
    assert torch.equal(bn.running_mean, running)


def test_until_freezes_up_to_and_including_the_block() -> None:
    model = create_model("resnet18", in_channels=1, num_outputs=2, spatial_dims=2, small_input=True)
    setup_finetuning(model, TrainConfig(freeze="until:layer3"))
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"layer4", "fc"}
    model.train()
    model(torch.randn(2, 1, 16, 16)).sum().backward()
    assert all(p.grad is None for p in model.layer3.parameters())
    assert all(p.grad is not None for p in model.layer4.parameters())


def test_until_a_top_level_container() -> None:
    model = compact()
    assert frozen_units(model, "until:features") == ["features.stage1", "features.stage2", "features.stage3"]
    assert frozen_units(model, "until:features.stage2") == ["features.stage1", "features.stage2"]


@pytest.mark.parametrize(("freeze", "every", "message"), [
    ("until:layer9", 0, "no block named 'layer9'.*features.stage1"),
    ("top", 0, "unknown freezing policy"),
    ("none", 2, "gradual unfreezing needs something frozen"),
])
def test_bad_fine_tuning_settings(freeze: str, every: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        setup_finetuning(compact(), TrainConfig(freeze=freeze, unfreeze_every=every))


def test_backbone_learning_rate_factor() -> None:
    model = compact()
    cfg = TrainConfig(lr=0.01, backbone_lr_factor=0.1, weight_decay=0.5)
    optimizer = build_optimizer(parameter_groups(model, cfg), cfg)
    by_param = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    assert by_param[id(model.head.weight)] == (0.01, 0.5)
    assert by_param[id(model.head.bias)] == (0.01, 0.0)
    assert by_param[id(model.features.stage1[0].weight)] == (pytest.approx(0.001), 0.5)
    assert by_param[id(model.features.stage1[1].bias)] == (pytest.approx(0.001), 0.0)
    assert optimizer.param_groups[0]["lr"] == 0.01  # the logged lr is the head's


def test_without_fine_tuning_keys_the_optimizer_is_unchanged() -> None:
    model = compact()
    cfg = TrainConfig(lr=0.01)
    groups = build_optimizer(parameter_groups(model, cfg), cfg).param_groups
    assert [len(g["params"]) for g in groups] == [7, 13]  # 7 kernels and matrices; 13 biases and BN scales
    assert [g["lr"] for g in groups] == [0.01, 0.01]


def test_frozen_parameters_do_not_move_and_gradual_unfreezing_goes_from_the_head_backwards() -> None:
    torch.manual_seed(0)
    model = compact()
    cfg = TrainConfig(freeze="backbone", unfreeze_every=2, lr=0.1, weight_decay=0.1)
    (unfreeze,) = setup_finetuning(model, cfg)
    assert isinstance(unfreeze, GradualUnfreeze)
    optimizer = build_optimizer(parameter_groups(model, cfg), cfg)
    stage3 = model.features.stage3[0].weight.detach().clone()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        grads_after_step(model)
        optimizer.step()

    step()
    assert torch.equal(model.features.stage3[0].weight, stage3)  # frozen: no update, no weight decay
    unfreeze.on_epoch_end(1, {})
    assert not model.features.stage3[0].weight.requires_grad
    unfreeze.on_epoch_end(2, {})
    assert unfreeze.unfrozen == ["features.stage3"]
    assert model.features.stage3[0].weight.requires_grad and model.features.stage3[1].training
    assert not model.features.stage2[0].weight.requires_grad
    step()
    assert not torch.equal(model.features.stage3[0].weight, stage3)
    unfreeze.on_epoch_end(4, {})
    assert unfreeze.unfrozen == ["features.stage3", "features.stage2"]


def test_resumed_run_replays_the_unfreezing() -> None:
    model = compact()
    (unfreeze,) = setup_finetuning(model, TrainConfig(freeze="backbone", unfreeze_every=1), epochs_done=2)
    assert unfreeze.unfrozen == ["features.stage3", "features.stage2"]
    assert not model.features.stage1[0].weight.requires_grad


def test_training_from_pretrained_weights_writes_a_self_contained_bundle(tmp_path: Path,
                                                                         small_phantoms: Path) -> None:
    from medsight.bundle import load_bundle
    from medsight.config import load_config
    from medsight.workflows.train import run_training

    torch.manual_seed(3)
    source = create_model("compact_cnn", in_channels=1, num_outputs=5, spatial_dims=2, width=8)
    weights = tmp_path / "source.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))
    cfg = load_config(recipe="demo", overrides={
        "data.path": str(small_phantoms), "preprocess.size": [32, 32], "train.epochs": 2, "eval.bootstrap": 0,
        "model.name": "compact_cnn", "model.kwargs": {"width": 8}, "model.pretrained": str(weights),
        "train.freeze": "until:features.stage2", "train.backbone_lr_factor": 0.5,
    })
    out = tmp_path / "run"
    run_training(cfg, out=out, progress=False)
    import json

    loaded = json.loads((out / "pretrained.json").read_text())
    assert loaded["reinitialised"] == ["head.weight", "head.bias"]
    assert len(loaded["loaded"]) == len(source.state_dict()) - 2
    weights.unlink()  # the bundle must not need the pretrained file
    model = load_bundle(out / "model").build_model()
    frozen = source.features.stage1[0].weight
    assert torch.equal(model.features.stage1[0].weight, frozen)  # frozen: exactly the pretrained kernel
    assert not torch.equal(model.features.stage3[0].weight, source.features.stage3[0].weight)


def test_gradual_unfreezing_is_refused_under_several_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("medsight.training.unfreezing.world_size", lambda: 2)
    with pytest.raises(ConfigError, match="not available with several processes"):
        setup_finetuning(compact(), TrainConfig(freeze="backbone", unfreeze_every=1))
