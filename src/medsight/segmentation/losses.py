"""Segmentation losses by name, with optional deep supervision.

Every loss takes logits ``(N, C, *spatial)`` (``C = num_classes``, background included) and
an integer label map ``(N, 1, *spatial)`` or ``(N, *spatial)``; the softmax and the one-hot
encoding happen inside. The Dice-type terms leave the background out.

Example:
    >>> loss_fn = make_seg_loss("dice_ce", num_classes=2)
    >>> loss = loss_fn(model(images), labels)

``cldice=w`` mixes in the soft centreline Dice of Shit et al. (clDice, CVPR 2021) for thin
tubular structures such as vessels: ``(1 - w) * loss + w * clDice``. It scores how much of the
true centreline the prediction covers and how much of the predicted centreline lies inside
the truth, so a broken or missed thin vessel costs as much as a thick one.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional

from medsight.errors import ConfigError

log = logging.getLogger(__name__)

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


def _neighbour_extreme(x: Tensor, axis: int, fill: float, pick: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """``pick`` (min or max) of ``x`` and its two neighbours along ``axis``; ``fill`` beyond the
    edge, so a patch border neither erodes nor dilates anything."""
    n = x.shape[axis]
    padded = functional.pad(x, [0, 0] * (x.dim() - axis - 1) + [1, 1], value=fill)
    return pick(x, pick(padded.narrow(axis, 0, n), padded.narrow(axis, 2, n)))


def _erode(x: Tensor) -> Tensor:
    """Min filter over the cross (the pixel and its 4 or 6 face neighbours)."""
    return functools.reduce(
        torch.minimum, (_neighbour_extreme(x, a, math.inf, torch.minimum) for a in range(2, x.dim()))
    )


def _dilate(x: Tensor) -> Tensor:
    """Max filter over the 3x3 (3x3x3) square, one axis at a time."""
    for axis in range(2, x.dim()):
        x = _neighbour_extreme(x, axis, -math.inf, torch.maximum)
    return x


def soft_skeleton(prob: Tensor, iterations: int = 5) -> Tensor:
    """A differentiable centreline of ``prob`` ``(N, C, *spatial)`` (2D or 3D), values in [0, 1].

    The morphological skeleton with min/max filters in place of erosion and dilation: what an
    opening removes at each of ``iterations`` erosions is added, so structures up to about
    ``2 * iterations + 1`` pixels wide keep a one-pixel centreline. The filters are shifts and
    elementwise min/max, which ``torch.compile`` fuses.
    """
    skeleton = functional.relu(prob - _dilate(_erode(prob)))
    for _ in range(iterations):
        prob = _erode(prob)
        delta = functional.relu(prob - _dilate(_erode(prob)))
        skeleton = skeleton + functional.relu(delta - skeleton * delta)
    return skeleton


def cldice_loss(logits: Tensor, target: Tensor, *, iterations: int = 5, smooth: float = 1.0) -> Tensor:
    """``1 - clDice`` over the foreground classes of softmax ``logits`` against label map ``target``
    ``(N, 1, *spatial)``: the harmonic mean of topology precision (predicted centreline inside
    the truth) and topology sensitivity (true centreline covered by the prediction), per case
    and class, averaged."""
    prob = torch.softmax(logits, dim=1)[:, 1:]
    truth = functional.one_hot(target[:, 0].long(), logits.shape[1]).movedim(-1, 1)[:, 1:].to(prob.dtype)
    axes = tuple(range(2, prob.dim()))
    pred_skel = soft_skeleton(prob, iterations)
    with torch.no_grad():
        true_skel = soft_skeleton(truth, iterations)
    precision = ((pred_skel * truth).sum(axes) + smooth) / (pred_skel.sum(axes) + smooth)
    sensitivity = ((true_skel * prob).sum(axes) + smooth) / (true_skel.sum(axes) + smooth)
    return (1.0 - 2.0 * precision * sensitivity / (precision + sensitivity)).mean()


def _compiled(loss: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """``loss`` through ``torch.compile``, falling back to eager for good on the first failure
    (no C compiler, an unsupported operator) with a warning."""
    compiled = torch.compile(loss)
    current = [compiled]

    def call(logits: Tensor, target: Tensor) -> Tensor:
        if current[0] is compiled:
            try:
                return compiled(logits, target)
            except Exception as exc:  # noqa: BLE001 - torch.compile raises many kinds; eager is always safe
                log.warning("compiling the loss failed (%s); computing it in eager mode", type(exc).__name__)
                current[0] = loss
        return loss(logits, target)

    return call


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
    name: str = "dice_ce",
    *,
    num_classes: int,
    deep_supervision: bool = False,
    cldice: float = 0.0,
    compile: bool = False,
    **kwargs: Any,
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
        cldice: weight ``w`` in ``[0, 1)`` of the soft clDice term: ``(1 - w) * loss + w * clDice``.
        compile: run the clDice term through ``torch.compile`` (about 3x faster on CPU; eager
            if compiling fails).
        **kwargs: passed to the MONAI loss (``lambda_dice``, ``gamma``, ``alpha``, ``beta``...).

    Raises:
        ConfigError: unknown name, fewer than 2 classes, a clDice weight outside [0, 1), or
            kwargs the MONAI loss rejects.

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
    if not 0.0 <= cldice < 1.0:
        raise ConfigError(f"cldice={cldice}", "the clDice weight must be in [0, 1)",
                          "use e.g. 0.3, or 0 to turn it off")
    try:
        base = _monai_loss(name, kwargs)
    except TypeError as exc:
        raise ConfigError(f"loss={name}", f"bad loss arguments ({exc})", "check the loss kwargs") from exc

    centreline = _compiled(cldice_loss) if compile and cldice else cldice_loss

    def single(logits: Tensor, target: Tensor) -> Tensor:
        target = _as_label_map(target, logits)
        if not cldice:
            return base(logits, target)
        return (1.0 - cldice) * base(logits, target) + cldice * centreline(logits, target)

    if not deep_supervision:
        return single

    def supervised(logits: Tensor, target: Tensor) -> Tensor:
        if _is_single_head(logits, target):
            return single(logits, target)
        weights = torch.tensor([0.5**i for i in range(logits.shape[1])])
        weights = weights / weights.sum()
        return sum(w * single(logits[:, i], target) for i, w in enumerate(weights.tolist()))

    return supervised
