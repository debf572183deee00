"""Segmentation losses by name, with optional deep supervision.

Every loss takes logits ``(N, C, *spatial)`` (``C = num_classes``, background included) and
an integer label map ``(N, 1, *spatial)`` or ``(N, *spatial)``; the softmax and the one-hot
encoding happen inside. The Dice-type terms leave the background out.

Example:
    >>> loss_fn = make_seg_loss("dice_ce", num_classes=2)
    >>> loss = loss_fn(model(images), labels)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional

from medsight.errors import ConfigError

SEG_LOSSES = ("dice_ce", "dice_focal", "focal", "tversky", "ce")


def _monai_loss(name: str, kwargs: dict[str, Any]) -> Callable[[Tensor, Tensor], Tensor]:
    """The MONAI loss for ``name`` set up for softmax logits and integer labels."""
    from monai import losses

    if name == "focal":
        return losses.FocalLoss(to_onehot_y=True, use_softmax=True, **{"gamma": 2.0, **kwargs})
    if name == "ce":
        weight = kwargs.get("weight")
        return lambda logits, target: functional.cross_entropy(
            logits, target[:, 0].long(), weight=None if weight is None else torch.as_tensor(weight, dtype=logits.dtype)
        )
    common = {"to_onehot_y": True, "softmax": True, "include_background": False, **kwargs}
    if name == "dice_ce":
        return losses.DiceCELoss(**common)
    if name == "dice_focal":
        return _dice_focal(common)
    return losses.TverskyLoss(**{"alpha": 0.3, "beta": 0.7, **common})


def _dice_focal(kwargs: dict[str, Any]) -> Callable[[Tensor, Tensor], Tensor]:
    """Softmax Dice plus softmax focal loss (MONAI's ``DiceFocalLoss`` puts a sigmoid in the
    focal term, which never reaches zero for softmax logits); ``gamma``, ``lambda_dice`` and
    ``lambda_focal`` (each 1 by default, gamma 2) are taken out, the rest go to ``DiceLoss``."""
    from monai import losses

    kwargs = dict(kwargs)
    lambda_dice, lambda_focal = kwargs.pop("lambda_dice", 1.0), kwargs.pop("lambda_focal", 1.0)
    focal = losses.FocalLoss(to_onehot_y=True, use_softmax=True, gamma=kwargs.pop("gamma", 2.0))
    dice = losses.DiceLoss(**kwargs)
    return lambda logits, target: lambda_dice * dice(logits, target) + lambda_focal * focal(logits, target)


def _as_label_map(target: Tensor, logits: Tensor) -> Tensor:
    """Labels as ``(N, 1, *spatial)``, matching the spatial size of ``logits``."""
    if target.dim() == logits.dim() - 1:
        target = target.unsqueeze(1)
    if target.shape[2:] != logits.shape[2:]:
        target = functional.interpolate(target.float(), size=logits.shape[2:], mode="nearest")
    return target


def _is_single_head(logits: Tensor, target: Tensor) -> bool:
    """Whether ``logits`` is one ``(N, C, *spatial)`` output for ``target`` rather than stacked heads.

    A single head has the spatial size of the target, given as ``(N, *spatial)`` or
    ``(N, 1, *spatial)``; stacked heads ``(N, heads, C, *spatial)`` never do, as ``C >= 2``.
    """
    spatial = tuple(logits.shape[2:])
    return tuple(target.shape[1:]) == spatial or (target.shape[1] == 1 and tuple(target.shape[2:]) == spatial)


def make_seg_loss(
    name: str = "dice_ce", *, num_classes: int, deep_supervision: bool = False, **kwargs: Any
) -> Callable[[Tensor, Tensor], Tensor]:
    """A segmentation loss ``loss(logits, labels) -> scalar``.

    Args:
        name: ``dice_ce`` (Dice + cross-entropy), ``dice_focal`` (Dice + focal), ``focal``
            (focal, gamma 2), ``ce`` (plain cross-entropy, optional class
            ``weight``) or ``tversky`` (alpha 0.3 on false positives, beta 0.7 on
            false negatives).
        num_classes: logits per pixel, background included (at least 2).
        deep_supervision: accept the stacked train-mode output of a deep-supervised DynUNet,
            ``(N, heads, C, *spatial)``, and average the heads with weights halving per
            level (1, 1/2, 1/4... normalised to sum 1); a head smaller than the labels is
            scored against nearest-neighbour downsampled labels. A plain
            ``(N, C, *spatial)`` output of the labels' size, as in eval mode, is scored as
            one head.
        **kwargs: passed to the MONAI loss (``lambda_dice``, ``gamma``, ``alpha``, ``beta``...).

    Raises:
        ConfigError: unknown name, fewer than 2 classes, or kwargs the MONAI loss rejects.

    Example:
        >>> loss_fn = make_seg_loss("tversky", num_classes=3, alpha=0.5, beta=0.5)
        >>> loss_fn(torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32)))
    """
    if name not in SEG_LOSSES:
        raise ConfigError(f"loss={name}", "unknown segmentation loss", f"choose one of: {', '.join(SEG_LOSSES)}")
    if num_classes < 2:
        raise ConfigError(
            f"num_classes={num_classes}",
            "segmentation losses use a softmax over classes including the background",
            "build the model with num_outputs=2 for a foreground/background task",
        )
    try:
        base = _monai_loss(name, kwargs)
    except TypeError as exc:
        raise ConfigError(f"loss={name}", f"bad loss arguments ({exc})", "check the loss kwargs") from exc

    def single(logits: Tensor, target: Tensor) -> Tensor:
        return base(logits, _as_label_map(target, logits))

    if not deep_supervision:
        return single

    def supervised(logits: Tensor, target: Tensor) -> Tensor:
        if _is_single_head(logits, target):
            return single(logits, target)
        weights = torch.tensor([0.5**i for i in range(logits.shape[1])])
        weights = weights / weights.sum()
        return sum(w * single(logits[:, i], target) for i, w in enumerate(weights.tolist()))

    return supervised
