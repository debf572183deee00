"""The network's feature space as a domain check: penultimate features and their distance to the training set.

A classifier's penultimate features are the input of its last ``nn.Linear`` (the head). A fold ensemble
(:class:`~medsight.models.ensemble.ProbabilityAverage`, anything with ``.members``) gives each member's, each
scaled to unit length and divided by the square root of the number of members, then concatenated: so the cosine
similarity of two ensemble feature vectors is the mean of the members' cosines.

An input's distance to the training set is the mean cosine distance ``1 - cos`` to its ``k`` nearest training
feature vectors (:func:`knn_distance`). :func:`calibrate` sets the threshold on calibration cases the model never
trained on and measures the false-alarm rate on other such cases.

Example:
    >>> with penultimate(model) as grab:
    ...     model(images)
    >>> features = grab()                       # (N, dim), unit length
    >>> knn_distance(features, reference, k=5)  # (N,) in [0, 2]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from medsight.errors import BundleError


def head_layers(model: nn.Module, member: int | None = None) -> list[nn.Linear]:
    """The last ``nn.Linear`` of the network, or of each member of a fold ensemble (only member ``member``
    when given).

    Raises:
        BundleError: a network (or member) without an ``nn.Linear`` layer.
    """
    members = list(model.members) if isinstance(getattr(model, "members", None), nn.ModuleList) else [model]
    if member is not None:
        members = [members[member]]
    layers = []
    for member in members:
        linear = [m for m in member.modules() if isinstance(m, nn.Linear)]
        if not linear:
            raise BundleError(type(member).__name__, "has no nn.Linear layer, so it has no penultimate features",
                              "train the domain record without a feature reference (reference_images=None)")
        layers.append(linear[-1])
    return layers


@contextmanager
def penultimate(model: nn.Module, member: int | None = None) -> Iterator[Callable[[], np.ndarray]]:
    """Record the penultimate features of every forward pass while the block runs; the hooks are always removed.

    A fold ensemble that also averages flipped views (test-time augmentation) runs each member once per view;
    the features are those of the first call in each forward pass, the image as it is.

    Yields:
        a function that returns the features recorded so far, ``(N, dim)`` float32, unit length per member
        (see the module docstring), and forgets them.
    """
    layers = head_layers(model, member)
    calls: list[list[list[torch.Tensor]]] = [[] for _ in layers]  # per layer, per forward pass of ``model``

    def new_pass(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        for passes in calls:
            passes.append([])

    def keep(index: int):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            calls[index][-1].append(inputs[0].detach().float().flatten(1).cpu())
        return hook

    handles = [model.register_forward_pre_hook(new_pass)]
    handles += [layer.register_forward_pre_hook(keep(i)) for i, layer in enumerate(layers)]

    def grab() -> np.ndarray:
        firsts = [torch.cat([views[0] for views in passes if views]).numpy() for passes in calls]
        for passes in calls:
            passes.clear()
        return np.concatenate([unit_rows(f) / np.sqrt(len(layers)) for f in firsts], axis=1).astype(np.float32)

    try:
        yield grab
    finally:
        for handle in handles:
            handle.remove()


@torch.inference_mode()
def features_of(model: nn.Module, images: torch.Tensor, *, batch_size: int = 64,
                device: torch.device | str = "cpu", member: int | None = None) -> np.ndarray:
    """Penultimate features ``(N, dim)`` of preprocessed images ``(N, C, *size)``, in eval mode (of one fold
    ensemble member when ``member`` is given)."""
    model.eval()
    with penultimate(model, member) as grab:
        for start in range(0, len(images), batch_size):
            model(images[start : start + batch_size].to(device))
        return grab()


def probs_and_features(predict: Callable[[np.ndarray], np.ndarray], model: nn.Module, batch: np.ndarray, *,
                       same_pass: bool, device: torch.device | str = "cpu",
                       member: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``predict(batch)`` and the penultimate features of ``batch``: recorded during that forward pass when
    ``predict`` runs ``model`` itself (``same_pass``), else by a second pass of ``model`` (an ONNX graph predicts)."""
    if same_pass:
        with penultimate(model, member) as grab:
            probs = predict(batch)
        return probs, grab()
    tensor = torch.from_numpy(np.ascontiguousarray(batch, np.float32))
    return predict(batch), features_of(model, tensor, device=device, member=member)


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length (a zero row stays zero)."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


def knn_distance(features: np.ndarray, reference: np.ndarray, *, k: int) -> np.ndarray:
    """Mean cosine distance ``1 - cos`` of each row of ``features`` to its ``k`` nearest rows of ``reference``."""
    similarity = np.asarray(features, np.float32) @ np.asarray(reference, np.float32).T
    k = min(k, reference.shape[0])
    nearest = -np.partition(-similarity, k - 1, axis=1)[:, :k]
    return (1.0 - nearest.mean(axis=1)).astype(np.float64)


def calibrate(distances: np.ndarray, *, quantile: float, seed: int) -> tuple[float, float | None, int, int]:
    """``(threshold, false-alarm rate, n threshold cases, n hold-out cases)`` from calibration distances.

    The cases are shuffled (``seed``) and halved: the threshold is the ``quantile`` (method ``higher``: an actual
    distance) of the first half; the false-alarm rate is the share of the second half above it, so it is measured
    on cases that did not set the threshold. Fewer than 4 cases: all of them set the threshold, and the rate is
    None (not measured).
    """
    order = np.random.default_rng(seed).permutation(len(distances))
    shuffled = np.asarray(distances, np.float64)[order]
    if len(shuffled) < 4:
        return float(np.quantile(shuffled, quantile, method="higher")), None, len(shuffled), 0
    half = len(shuffled) // 2
    setting, holdout = shuffled[:half], shuffled[half:]
    threshold = float(np.quantile(setting, quantile, method="higher"))
    return threshold, float(np.mean(holdout > threshold)), len(setting), len(holdout)
