"""Saliency maps for classifiers: Grad-CAM, Grad-CAM++ and occlusion, 2D and 3D.

Every method takes the network, one preprocessed input ``(1, C, *spatial)`` and the class to
explain, and returns a ``float32`` map of the input's spatial shape scaled to ``[0, 1]``.
A fold ensemble's map (:func:`saliency`) is the average of its members' maps, each member explained
on its own (its own Grad-CAM layer, its own class score), over the flipped views the ensemble
averages too (each view's map flipped back), then scaled to ``[0, 1]`` again.
Hooks live in :func:`capture`, a context manager that always removes them; gradients are
taken with :func:`torch.autograd.grad` with respect to the captured activations only, so no
parameter's ``.grad`` is touched and the model leaves exactly as it came (tested).

Example:
    >>> heat = gradcam(model, x, target=1)            # layer: model.gradcam_layer
    >>> heat = occlusion(model, x, target=1, head="softmax", patch=8)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from medsight.errors import ConfigError
from medsight.models.ensemble import ProbabilityAverage

METHODS = ("gradcam", "gradcam++", "occlusion")


@contextmanager
def capture(model: nn.Module, layer: str) -> Iterator[dict[str, torch.Tensor]]:
    """Record ``layer``'s output in ``store["activation"]`` during forward passes; the hook is always removed.

    Raises:
        ConfigError: no such layer, with the names of the model's blocks to choose from.
    """
    try:
        module = model.get_submodule(layer)
    except AttributeError as exc:
        names = [name for name, _ in model.named_children()]
        raise ConfigError(
            f"--layer {layer}", "is not a layer of this model",
            f"give a dotted module path such as one of {names} (default: the model's last conv block)",
        ) from exc
    store: dict[str, torch.Tensor] = {}
    handle = module.register_forward_hook(lambda _m, _i, output: store.__setitem__("activation", output))
    try:
        yield store
    finally:
        handle.remove()


def target_layer(model: nn.Module, layer: str | None) -> str:
    """``layer``, or the model's own ``gradcam_layer`` (its last convolutional block)."""
    if layer:
        return layer
    default = getattr(model, "gradcam_layer", None)
    if default is None:
        raise ConfigError("--layer", "this model names no default Grad-CAM layer", "pass --layer NAME")
    return default


def class_score(logits: torch.Tensor, target: int, head: str) -> torch.Tensor:
    """The scalar being explained: the target's log-probability under a softmax head (its logit minus the
    log-sum-exp of all, so evidence every class shares cancels out), or a sigmoid head's log-odds (negated
    for class 0)."""
    if logits.shape[1] == 1:
        return logits[0, 0] if target == 1 or head != "sigmoid" else -logits[0, 0]
    return torch.log_softmax(logits, dim=1)[0, target]


def gradcam(model: nn.Module, x: torch.Tensor, *, target: int, layer: str | None = None, head: str = "softmax",
            plus_plus: bool = False) -> np.ndarray:
    """Grad-CAM (or Grad-CAM++ with ``plus_plus``) of ``target`` for one input ``(1, C, *spatial)``."""
    was_training = model.training
    model.eval()
    try:
        with capture(model, target_layer(model, layer)) as store, torch.enable_grad():
            score = class_score(model(x), target, head)
            activation = store["activation"]
            (grads,) = torch.autograd.grad(score, activation)
    finally:
        model.train(was_training)
    activation, grads = activation.detach()[0], grads.detach()[0]
    spatial = tuple(range(1, activation.dim()))
    if plus_plus:
        g2, g3 = grads**2, grads**3
        denominator = 2 * g2 + activation.sum(dim=spatial, keepdim=True) * g3
        alpha = g2 / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
        weights = (alpha * functional.relu(grads)).sum(dim=spatial)
    else:
        weights = grads.mean(dim=spatial)
    cam = functional.relu((weights.view(-1, *([1] * len(spatial))) * activation).sum(dim=0))
    return _to_input_size(cam, x.shape[2:])


def occlusion(model: nn.Module, x: torch.Tensor, *, target: int, head: str = "softmax", patch: int | None = None,
              stride: int | None = None, batch_size: int = 32) -> np.ndarray:
    """How much the target's probability drops when a patch is replaced by the image mean, per position."""
    from medsight.models.heads import logits_to_probs

    spatial = tuple(int(n) for n in x.shape[2:])
    patch = patch or max(2, min(spatial) // 8)
    stride = stride or max(1, patch // 2)
    starts = [range(0, max(n - patch, 0) + 1, stride) for n in spatial]
    grid = np.stack(np.meshgrid(*starts, indexing="ij"), axis=-1).reshape(-1, len(spatial))
    fill = float(x.mean())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            base = _prob(logits_to_probs(model(x), head), target)
            heat = torch.zeros(spatial)
            count = torch.zeros(spatial)
            for begin in range(0, len(grid), batch_size):
                chunk = grid[begin : begin + batch_size]
                batch = x.repeat(len(chunk), *([1] * (x.dim() - 1)))
                for row, start in enumerate(chunk):
                    window = tuple(slice(int(s), int(s) + patch) for s in start)
                    batch[(row, slice(None), *window)] = fill
                drops = base - _prob(logits_to_probs(model(batch), head), target)
                for drop, start in zip(drops, chunk, strict=True):
                    window = tuple(slice(int(s), int(s) + patch) for s in start)
                    heat[window] += drop
                    count[window] += 1
    finally:
        model.train(was_training)
    heat = functional.relu(heat / count.clamp(min=1))
    return _scaled(heat.numpy())


def explained_networks(model: nn.Module) -> list[tuple[nn.Module, tuple[int, ...]]]:
    """The networks a map is averaged over, each with the spatial axes its input is flipped along: a fold
    ensemble's members on the input as it is and on each view in its ``flips``; any other model alone."""
    if isinstance(model, ProbabilityAverage):
        views = [(), *(tuple(axes) for axes in getattr(model, "flips", ()))]
        return [(member, axes) for axes in views for member in model.members]
    return [(model, ())]


def check_layer(model: nn.Module, layer: str | None) -> None:
    """Fail now, not once per file, when a network :func:`saliency` explains has no such layer (a fold
    ensemble's ``layer`` is a layer of its member network).

    Raises:
        ConfigError: no such layer, or no default layer.
    """
    for network, _ in explained_networks(model):
        with capture(network, target_layer(network, layer)):
            pass


def saliency(model: nn.Module, x: torch.Tensor, *, method: str, target: int, layer: str | None = None,
             head: str = "softmax") -> np.ndarray:
    """One of :data:`METHODS` by name; for a fold ensemble, the average of its members' maps (the module doc).

    Example:
        >>> heat = saliency(ensemble, x, method="gradcam", target=1)  # mean of the members' Grad-CAMs, peak 1
    """
    networks = explained_networks(model)
    if networks == [(model, ())]:
        return _one_saliency(model, x, method=method, target=target, layer=layer, head=head)
    maps = []
    for network, axes in networks:
        view = torch.flip(x, axes) if axes else x
        heat = _one_saliency(network, view, method=method, target=target, layer=layer, head=head)
        maps.append(np.flip(heat, axes) if axes else heat)
    return _scaled(np.mean(maps, axis=0))


def _one_saliency(model: nn.Module, x: torch.Tensor, *, method: str, target: int, layer: str | None,
                  head: str) -> np.ndarray:
    if method == "gradcam":
        return gradcam(model, x, target=target, layer=layer, head=head)
    if method == "gradcam++":
        return gradcam(model, x, target=target, layer=layer, head=head, plus_plus=True)
    if method == "occlusion":
        return occlusion(model, x, target=target, head=head)
    raise ConfigError(f"--method {method}", "unknown explanation method", f"choose one of: {', '.join(METHODS)}")


def _prob(probs: torch.Tensor, target: int) -> torch.Tensor:
    return probs[:, target] if probs.shape[1] > 1 else (probs[:, 0] if target == 1 else 1 - probs[:, 0])


def _to_input_size(cam: torch.Tensor, size: torch.Size) -> np.ndarray:
    mode = "bilinear" if cam.dim() == 2 else "trilinear"
    resized = functional.interpolate(cam[None, None].float(), size=tuple(size), mode=mode, align_corners=False)
    return _scaled(resized[0, 0].numpy())


def _scaled(heat: np.ndarray) -> np.ndarray:
    heat = np.asarray(heat, dtype=np.float32)
    top = float(heat.max()) if heat.size else 0.0
    return heat / top if top > 0 else np.zeros_like(heat)
