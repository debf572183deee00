"""Mixing generated samples into a classifier's training split (``train.synthetic``).

``n_synth = round(train.synthetic_ratio * n_train)`` images come from the class-conditional
generator folder ``train.synthetic``, with labels in the training split's class proportions
(largest remainders), drawn reproducibly from ``train.seed``. The generator makes images in
the ``[0, 1]`` range of minmax preprocessing; the run's ``preprocess.normalize`` is then applied
to each one, as it is to the real images. Only the training split is touched: validation and
test stay real.

Example:
    >>> train, note = mix_synthetic(tensors["train"], cfg, class_names=ds.class_names)
    >>> note["n_synthetic"], note["per_class"]
    (546, {'malignant': 147, 'normal_or_benign': 399})
"""

from __future__ import annotations

import numpy as np

from medsight.config import RunConfig
from medsight.errors import ConfigError


def class_quota(labels: np.ndarray, num_classes: int, n: int) -> np.ndarray:
    """``n`` split over the classes in proportion to ``labels`` (largest remainders; sums to ``n``).

    Example:
        >>> class_quota(np.array([0, 0, 0, 1]), 2, 6).tolist()
        [4, 2]
    """
    counts = np.bincount(labels, minlength=num_classes)[:num_classes].astype(np.float64)
    exact = n * counts / max(counts.sum(), 1)
    quota = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - quota), kind="stable")
    quota[order[: n - int(quota.sum())]] += 1
    return quota


def mix_synthetic(train, cfg: RunConfig, *, class_names: list[str]):
    """The training TensorSet with generated samples appended, and a provenance note.

    Returns:
        ``(tensor_set, note)``; ``note`` records the generator, ratio, counts per class and seed.

    Raises:
        ConfigError: ``synthetic_ratio`` is 0, the generator is not class-conditional, or its
            label names, size or channels differ from the run's.
        BundleError: ``train.synthetic`` is not a readable generator folder.
    """
    import torch

    from medsight.classification.batches import TensorSet
    from medsight.models.generator_store import load_generator
    from medsight.models.generators import generate
    from medsight.transforms.intensity import normalize

    where = f"train.synthetic={cfg.train.synthetic}"
    if cfg.train.synthetic_ratio <= 0:
        raise ConfigError("train.synthetic_ratio", "is 0, so no generated sample would be mixed in",
                          "set train.synthetic_ratio (e.g. 1.0: one generated sample per real one)")
    net, info = load_generator(cfg.train.synthetic)
    if info.kind != "dcgan":
        raise ConfigError(where, f"is a {info.kind} generator (mask -> image) with no class labels",
                          "mix a class-conditional generator: medsight gan train DATA --kind dcgan")
    problems = []
    if info.label_names != list(class_names):
        problems.append(f"labels {info.label_names} differ from the run's classes {list(class_names)}")
    if info.size != list(cfg.preprocess.size):
        problems.append(f"size {info.size} differs from preprocess.size {list(cfg.preprocess.size)}")
    if info.channels != cfg.preprocess.channels:
        problems.append(f"{info.channels} channel(s) differ from preprocess.channels {cfg.preprocess.channels}")
    if cfg.preprocess.normalize == "none":
        problems.append("preprocess.normalize=none keeps the raw intensity scale, which generated images lack")
    if problems:
        raise ConfigError(where, "; ".join(problems),
                          "train the generator on this data with the run's size and channels (medsight gan train)")
    n_synth = round(cfg.train.synthetic_ratio * len(train))
    quota = class_quota(train.labels.numpy(), len(class_names), n_synth)
    labels = torch.from_numpy(np.repeat(np.arange(len(class_names)), quota))
    images = generate(net, labels, seed=cfg.train.seed).numpy()
    images = np.stack([normalize(image, cfg.preprocess.normalize) for image in images]) if len(images) else images
    ids = [f"synthetic:{cfg.train.synthetic}#{i}" for i in range(n_synth)]
    mixed = TensorSet(
        images=torch.cat([train.images, torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))]),
        labels=torch.cat([train.labels, labels.long()]),
        ids=list(train.ids) + ids,
    )
    note = {
        "generator": str(cfg.train.synthetic),
        "ratio": cfg.train.synthetic_ratio,
        "n_real": len(train),
        "n_synthetic": n_synth,
        "per_class": {name: int(q) for name, q in zip(class_names, quota, strict=True)},
        "seed": cfg.train.seed,
        "generator_epochs": info.provenance.get("epochs"),
        "splits": "train only; validation and test are real",
    }
    return mixed, note
