"""Freezing a model's parts: freezing policies and a lower backbone learning rate.

The **head** of every registered classifier is its final classification layer, the model's
last ``nn.Linear`` (``compact_cnn``: ``head``; ``classic_cnn``: ``classifier.4``; MONAI
ResNets: ``fc``; ``densenet121``: ``class_layers.out``). Everything else is the **backbone**.

**Blocks** are the model's top-level children in order, with a top-level ``nn.Sequential``
that does not hold the head opened one level (``features.stage1``, ``features.denseblock2``),
keeping only blocks with parameters. ``train.freeze``:

* ``none``: train everything;
* ``backbone``: freeze everything except the head;
* ``until:NAME``: freeze every block up to and including ``NAME`` (a block name such as
  ``layer3`` or ``features.stage2``, or a top-level child such as ``features``).

Frozen parameters get ``requires_grad = False`` and frozen BatchNorm layers stay in eval
mode (their running statistics do not move) even while the trainer calls ``model.train()``.
``train.backbone_lr_factor`` puts the backbone in its own optimizer group with
``lr * factor``. Applying the policy in a run, and gradual unfreezing (``train.unfreeze_every``),
are training callbacks: :mod:`medsight.training.unfreezing`.

Example:
    >>> for name in frozen_units(model, "backbone"):
    ...     set_frozen(model, name, True)
    >>> optimizer = build_optimizer(parameter_groups(model, cfg), cfg)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from medsight.config import TrainConfig
from medsight.errors import ConfigError
from medsight.models.pretrained import head_name


def is_finetuning(cfg: TrainConfig) -> bool:
    """True when any fine-tuning key differs from its default."""
    return cfg.freeze != "none" or cfg.backbone_lr_factor != 1.0 or cfg.unfreeze_every > 0


def blocks(model: nn.Module) -> list[str]:
    """The model's block names in forward order (see the module docstring)."""
    head = head_name(model) or ""
    names = []
    for name, child in model.named_children():
        holds_head = head == name or head.startswith(f"{name}.")
        if isinstance(child, nn.Sequential) and not holds_head:
            names += [f"{name}.{sub}" for sub, _ in child.named_children()]
        else:
            names.append(name)
    return [n for n in names if any(True for _ in model.get_submodule(n).parameters())]


def frozen_units(model: nn.Module, policy: str) -> list[str]:
    """Module names that ``policy`` freezes, in forward order.

    Raises:
        ConfigError: an unknown policy, a model without a linear head, or an unknown ``until:`` block.
    """
    policy = policy.strip()
    if policy == "none":
        return []
    if policy == "backbone":
        head = head_name(model)
        if head is None:
            raise ConfigError("train.freeze=backbone", "the model has no linear head", "use until:BLOCK")
        units = []
        for name in blocks(model):
            if head.startswith(f"{name}."):
                units += _cover_except(model.get_submodule(name), head, prefix=f"{name}.")
            elif name != head:
                units.append(name)
        return units
    if policy.startswith("until:"):
        target = policy.removeprefix("until:").strip()
        names = blocks(model)
        hits = [i for i, n in enumerate(names) if n == target or n.startswith(f"{target}.")]
        if not hits:
            raise ConfigError(f"train.freeze={policy}", f"no block named '{target}'",
                              f"use one of: {', '.join(names)}")
        return names[: hits[-1] + 1]
    raise ConfigError(f"train.freeze={policy}", "unknown freezing policy", "use none, backbone or until:BLOCK")


def set_frozen(model: nn.Module, name: str, frozen: bool) -> None:
    """Freeze (or unfreeze) the module ``name``: its parameters' ``requires_grad`` and BatchNorm mode."""
    module = model.get_submodule(name)
    for param in module.parameters():
        param.requires_grad_(not frozen)
    for norm in module.modules():
        if not isinstance(norm, _BatchNorm):
            continue
        handle = norm.__dict__.pop("_medsight_frozen_hook", None)
        if handle is not None:
            handle.remove()
        if frozen:
            norm.__dict__["_medsight_frozen_hook"] = norm.register_forward_pre_hook(_keep_eval)
            norm.eval()
        else:
            norm.train(model.training)


def _keep_eval(module: nn.Module, args: Any) -> None:
    """Forward pre-hook of a frozen BatchNorm: always normalise with the stored statistics."""
    module.training = False


def parameter_groups(model: nn.Module, cfg: TrainConfig) -> Iterable[nn.Parameter] | list[dict[str, Any]]:
    """What :func:`~medsight.training.optim.build_optimizer` takes.

    Without fine-tuning keys: ``model.parameters()`` (the optimizer's usual behaviour). With
    them: ``[{"params": head, "lr_scale": 1.0}, {"params": backbone, "lr_scale": factor}]``
    holding every parameter, frozen ones too, so that unfreezing needs no new optimizer (a
    parameter without a gradient is not updated, nor decayed).
    """
    if not is_finetuning(cfg):
        return model.parameters()
    head = head_name(model)
    head_params = list(model.get_submodule(head).parameters()) if head else []
    ids = {id(p) for p in head_params}
    backbone = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": head_params, "lr_scale": 1.0}, {"params": backbone, "lr_scale": cfg.backbone_lr_factor}]


def _cover_except(root: nn.Module, keep: str, *, prefix: str) -> list[str]:
    """The fewest module names (``prefix`` + path in ``root``) covering every parameter outside ``keep``."""
    names: list[str] = []

    def walk(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if full == keep:
                continue
            if keep.startswith(f"{full}."):
                walk(child, f"{full}.")
            elif any(True for _ in child.parameters()):
                names.append(full)

    walk(root, prefix)
    return names
