"""Training a class-conditional DCGAN for 2D images of 28 to 64 pixels, and the adversarial training loop.

The generator (:class:`~medsight.models.generators.DCGANGenerator`) maps noise plus a label
embedding through transposed convolutions (BatchNorm, ReLU, ``tanh`` output); the discriminator
is a spectrally normalised convolutional network with a projection head for the label (Miyato &
Koyama 2018), trained with the hinge loss. Images are preprocessed with ``minmax`` to ``[0, 1]``
and shown to the networks in ``[-1, 1]``.

:func:`fit_adversarial` is the loop both GANs share: one discriminator step and one generator
step per batch, a checkpoint of generator + discriminator + optimizer + random state every epoch
(``OUT/checkpoints/last.safetensors``), the generator folder rewritten every epoch (``OUT/generator``)
and ``resume`` from the checkpoint.

Example:
    >>> folder = train_dcgan("breastmnist.npz", out=Path("runs/gan"), size=(28, 28), epochs=50)
    >>> images = sample_images(folder, n=16, label="malignant")   # (16, 1, 28, 28) in [0, 1]
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from medsight.atomic_write import atomic_write_text
from medsight.errors import ConfigError, DatasetError
from medsight.models.generator_store import GeneratorInfo, load_generator, save_generator
from medsight.models.generators import DCGANGenerator, check_size, generate, sampling_stages

CHECKPOINT = Path("checkpoints") / "last.safetensors"


class DCGANDiscriminator(nn.Module):
    """Image + label -> realness score, spectrally normalised, with a projection head for the label."""

    def __init__(self, *, num_classes: int, channels: int, size: tuple[int, int], width: int = 64) -> None:
        super().__init__()
        stages = sampling_stages(check_size(size))
        layers: list[nn.Module] = [spectral_norm(nn.Conv2d(channels, width, 3, padding=1)), nn.LeakyReLU(0.2)]
        for i in range(stages):
            cin = width * 2**i
            layers += [spectral_norm(nn.Conv2d(cin, 2 * cin, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        top = width * 2**stages
        self.linear = spectral_norm(nn.Linear(top, 1))
        self.embed = spectral_norm(nn.Embedding(num_classes, top))

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.features(images).sum(dim=(2, 3))
        return self.linear(h).squeeze(1) + (self.embed(labels) * h).sum(dim=1)


@dataclass
class AdversarialTask:
    """What :func:`fit_adversarial` trains: two networks, their data and their losses.

    ``d_loss(real, condition)`` and ``g_loss(real, condition)`` get a batch of real images in
    ``[-1, 1]`` and their condition (labels or masks) and draw their own noise from torch's
    global generator, whose state the checkpoint saves.
    """

    generator: nn.Module
    discriminator: nn.Module
    images: torch.Tensor
    conditions: torch.Tensor
    d_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    g_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def fit_adversarial(task: AdversarialTask, info: GeneratorInfo, *, out: Path, epochs: int, batch_size: int,
                    lr: float, seed: int, resume: bool, progress: bool) -> list[dict]:
    """Train the two networks of ``task``; checkpoint every epoch; write the generator folder.

    Returns:
        One row per epoch: ``epoch``, ``d_loss``, ``g_loss``, ``seconds``.

    Raises:
        MedsightError: ``resume`` without a checkpoint that fits.
    """
    from medsight.runtime.checkpoint import load_checkpoint, save_checkpoint

    out = Path(out)
    nets = nn.ModuleDict({"generator": task.generator, "discriminator": task.discriminator})
    optimizer = torch.optim.Adam(
        [{"params": task.generator.parameters()}, {"params": task.discriminator.parameters()}],
        lr=lr, betas=(0.5, 0.999),
    )
    torch.manual_seed(seed)
    history: list[dict] = []
    if resume:
        history = load_checkpoint(out / CHECKPOINT, model=nets, optimizer=optimizer, scheduler=None)["history"]
    n = len(task.images)
    for epoch in range(len(history) + 1, epochs + 1):
        started = time.perf_counter()
        nets.train()
        sums = np.zeros(2)
        order = torch.randperm(n)
        batches = [order[i: i + batch_size] for i in range(0, n, batch_size)]
        if len(batches) > 1 and len(batches[-1]) < 2:  # BatchNorm needs two rows
            batches = batches[:-1]
        for idx in batches:
            real, condition = task.images[idx], task.conditions[idx]
            sums[0] += _step(optimizer, task.d_loss(real, condition), keep=task.discriminator, drop=task.generator)
            sums[1] += _step(optimizer, task.g_loss(real, condition), keep=task.generator, drop=task.discriminator)
        row = {"epoch": epoch, "d_loss": sums[0] / len(batches), "g_loss": sums[1] / len(batches),
               "seconds": round(time.perf_counter() - started, 2)}
        history.append(row)
        save_checkpoint(out / CHECKPOINT, model=nets, optimizer=optimizer, scheduler=None,
                        state={"epoch": epoch, "history": history})
        info.provenance["epochs"] = epoch
        save_generator(out / "generator", task.generator.state_dict(), info)
        atomic_write_text(out / "history.json", json.dumps(history, indent=1))
        if progress:
            print(f"epoch {epoch}/{epochs}: d_loss {row['d_loss']:.4f} g_loss {row['g_loss']:.4f} "
                  f"({row['seconds']:.1f} s)", flush=True)
    return history


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, *, keep: nn.Module, drop: nn.Module) -> float:
    """Back-propagate ``loss`` and update only ``keep`` (Adam skips parameters without a gradient)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for p in drop.parameters():
        p.grad = None
    optimizer.step()
    return float(loss.detach())


def load_class_images(data: str | Path, *, size: tuple[int, int], channels: int, val_fraction: float,
                      test_fraction: float, progress: bool, class_names: list[str] | None = None):
    """The training split of a classification data set as ``(TensorSet, class names)``, minmax to ``[0, 1]``.

    The split is the one ``medsight train`` makes with the same ``val_fraction`` / ``test_fraction``
    (a MedMNIST npz keeps its own train split), so the GAN never sees a validation or test case.
    """
    from medsight.classification.prepare import load_tensors
    from medsight.config import DataConfig, PreprocessConfig
    from medsight.data.layouts import open_dataset
    from medsight.data.splits import resolve_splits

    ds = open_dataset(data, class_names=class_names)
    splits = resolve_splits(ds, DataConfig(val_fraction=val_fraction, test_fraction=test_fraction))
    prep = PreprocessConfig(size=list(size), channels=channels, normalize="minmax")
    tensors, _ = load_tensors(ds, splits["train"], prep, progress=progress, desc="train")
    return tensors, ds.class_names


def train_dcgan(data: str | Path, *, out: Path, size: tuple[int, ...] = (64, 64), channels: int = 1,
                epochs: int = 50, batch_size: int = 64, lr: float = 2e-4, latent_dim: int = 64, width: int = 64,
                seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15,
                class_names: list[str] | None = None, resume: bool = False, progress: bool = True) -> Path:
    """Train a class-conditional DCGAN on the training split of ``data``; returns ``OUT/generator``.

    ``class_names`` fixes the label order as in the classifier run (``data.class_names``); the
    generator's label names must equal the run's classes for mixing.

    Raises:
        ConfigError: a size outside 28..64.
        DatasetError: fewer than 2 training images, or a data set that is not a labelled 2D set.
    """
    size2 = check_size(tuple(size))
    tensors, class_names = load_class_images(data, size=size2, channels=channels, val_fraction=val_fraction,
                                             test_fraction=test_fraction, progress=progress,
                                             class_names=class_names)
    if len(tensors) < 2 or (tensors.labels < 0).any():
        raise DatasetError(data, "needs at least 2 labelled training images", "train the GAN on labelled data")
    torch.manual_seed(seed)
    num_classes = len(class_names)
    gen = DCGANGenerator(num_classes=num_classes, channels=channels, size=size2, latent_dim=latent_dim, width=width)
    disc = DCGANDiscriminator(num_classes=num_classes, channels=channels, size=size2, width=width)

    def d_loss(real: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            fake = gen(torch.randn(len(real), latent_dim), labels)
        return torch.relu(1 - disc(real, labels)).mean() + torch.relu(1 + disc(fake, labels)).mean()

    def g_loss(real: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return -disc(gen(torch.randn(len(real), latent_dim), labels), labels).mean()

    info = GeneratorInfo(
        kind="dcgan", size=list(size2), channels=channels, label_names=list(class_names),
        net={"latent_dim": latent_dim, "width": width},
        provenance=_provenance(data, len(tensors), seed, class_counts=np.bincount(
            tensors.labels.numpy(), minlength=num_classes).tolist()),
    )
    task = AdversarialTask(gen, disc, tensors.images * 2 - 1, tensors.labels, d_loss, g_loss)
    fit_adversarial(task, info, out=Path(out), epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                    resume=resume, progress=progress)
    return Path(out) / "generator"


def _provenance(data: str | Path, n_train: int, seed: int, **extra) -> dict:
    from medsight.bundle import provenance

    return provenance(data=str(data), n_train=n_train, seed=seed, **extra)


def sample_images(generator: str | Path, *, n: int, label: str | int, seed: int = 0) -> np.ndarray:
    """``n`` images of class ``label`` (a name or an index) as ``(n, C, H, W)`` float32 in ``[0, 1]``.

    Raises:
        BundleError: not a generator folder.
        ConfigError: a pix2pix generator (it needs masks), ``n < 1``, or an unknown label.
    """
    net, info = load_generator(generator)
    if info.kind != "dcgan":
        raise ConfigError(generator, f"is a {info.kind} generator, which makes images from masks",
                          "pass --masks DIR with the masks to translate")
    if n < 1:
        raise ConfigError(f"n={n}", "asks for no image", "pass --n 1 or more")
    labels = torch.full((n,), info.label_index(label), dtype=torch.long)
    return generate(net, labels, seed=seed).numpy()
