"""FGSM and PGD adversarial attacks (L-infinity) on a bundle's classifier.

The perturbation lives on the **network's input scale**: after the bundle's preprocessing
(:func:`medsight.transforms.preprocess`), so ``eps=0.03`` on a ``minmax`` bundle is 3% of the
intensity range and on a ``zscore`` bundle 0.03 standard deviations. The attacked images are
not clipped to a valid range, as the normalised space has none.

* FGSM (Goodfellow et al., 2015): one step ``x + eps * sign(grad_x loss)``.
* PGD (Madry et al., 2018): ``steps`` signed-gradient steps of ``2.5 * eps / steps``, each
  projected back into the L-inf ball of radius ``eps`` around the clean image; no random
  start, so an attack is deterministic.

The loss is the training loss of the bundle's head (cross-entropy, or BCE for a sigmoid
head) against the true labels. The model is used in eval mode and only the gradient with
respect to the input is taken: the weights and their ``.grad`` are never touched.

Example:
    >>> predictor = Predictor(bundle)
    >>> adv = attack(predictor.model, images, labels, head="softmax", method="pgd", eps=0.03)
    >>> probs = predictor.predict_tensors(adv)
"""

from __future__ import annotations

from medsight.errors import ConfigError

ATTACKS = ("fgsm", "pgd")
DEFAULT_EPS = (0.0, 0.005, 0.01, 0.02, 0.05)
PGD_STEPS = 5


def attack(model, images, labels, *, head: str, method: str, eps: float, steps: int = PGD_STEPS,
           batch_size: int = 128):
    """Adversarial versions of ``images`` (a ``(N, C, *spatial)`` float tensor) for ``model``.

    Args:
        model: the classifier (``Bundle.build_model()``); its mode is restored afterwards.
        images: preprocessed images on the network's input scale.
        labels: ``(N,)`` true class indices.
        head: ``softmax`` or ``sigmoid`` (the bundle's ``model.head``).
        method: ``fgsm`` or ``pgd``.
        eps: the L-inf radius on the input scale; 0 returns the images unchanged.
        steps: PGD iterations (ignored by FGSM).

    Returns:
        A new tensor of the same shape, on the CPU.

    Raises:
        ConfigError: an unknown method, a negative eps or fewer than one PGD step.
    """
    import torch

    check_attack(method, eps)
    if method == "pgd" and steps < 1:
        raise ConfigError(f"steps={steps}", "PGD needs at least one step", "use steps >= 1")
    if eps == 0:
        return images.detach().clone().cpu()
    from medsight.classification.trainer import make_loss

    loss_fn = make_loss(head, 0.0, None)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out = []
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].detach().to(device, torch.float32)
            y = labels[start : start + batch_size].to(device)
            n_steps, step = (1, eps) if method == "fgsm" else (steps, 2.5 * eps / steps)
            adv = x.clone()
            for _ in range(n_steps):
                adv.requires_grad_(True)
                (grad,) = torch.autograd.grad(loss_fn(model(adv), y), adv)
                adv = adv.detach() + step * grad.sign()
                adv = torch.minimum(torch.maximum(adv, x - eps), x + eps)
            out.append(adv.detach().cpu())
        return torch.cat(out)
    finally:
        model.train(was_training)


def check_attack(method: str, eps: float) -> None:
    """Raise :class:`ConfigError` for an unknown method or a negative/non-finite eps."""
    if method not in ATTACKS:
        raise ConfigError(f"attack={method}", "unknown attack", f"choose from {', '.join(ATTACKS)}")
    if not (eps >= 0 and eps < float("inf")):
        raise ConfigError(f"eps={eps}", "eps must be a finite number >= 0",
                          "use small values on the network's input scale, e.g. 0.005 to 0.05")
