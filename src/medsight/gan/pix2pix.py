"""Training Pix2Pix on segmentation data: a U-Net generator that turns a label mask into an image.

The generator (:class:`~medsight.models.generators.UNetGenerator`) reads the one-hot mask (one
channel per label value) and writes an image in ``[-1, 1]``; a PatchGAN discriminator judges
``(mask, image)`` pairs patch by patch. The loss is the adversarial (binary cross-entropy) loss
plus ``l1_weight`` times the L1 distance to the real image (Isola et al. 2017). Trains with
:func:`medsight.gan.dcgan.fit_adversarial`.

Example:
    >>> folder = train_pix2pix("drive/training", out=Path("runs/p2p"), size=(64, 64), epochs=100)
    >>> images = translate(folder, masks)   # masks: (N, H, W) int label maps -> (N, C, H, W) in [0, 1]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from medsight.errors import ConfigError, DatasetError
from medsight.gan.dcgan import AdversarialTask, fit_adversarial
from medsight.models.generator_store import GeneratorInfo, load_generator
from medsight.models.generators import DEPTH, UNetGenerator, check_size, down_block, to_unit_range


class PatchDiscriminator(nn.Module):
    """``(mask, image)`` -> a map of realness logits, one per overlapping patch."""

    def __init__(self, *, num_labels: int, channels: int, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            down_block(num_labels + channels, width, norm=False), down_block(width, 2 * width),
            down_block(2 * width, 4 * width),
            nn.Conv2d(4 * width, 1, 3, padding=1),
        )

    def forward(self, masks: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([masks, images], dim=1))


def one_hot(masks: torch.Tensor, num_labels: int) -> torch.Tensor:
    """``(N, H, W)`` label indices -> ``(N, num_labels, H, W)`` float in ``{-1, 1}``."""
    return nn.functional.one_hot(masks.long(), num_labels).permute(0, 3, 1, 2).float() * 2 - 1


def load_pairs(data: str | Path, *, size: tuple[int, int], channels: int, progress: bool):
    """Every image/mask pair of a segmentation set, resized: ``(images in [0, 1], label indices, label names)``.

    Mask values are mapped to indices ``0..K-1`` in the order of the data set's label values.
    """
    from medsight.config import PreprocessConfig
    from medsight.data.seg_layouts import open_seg_dataset
    from medsight.progress import track
    from medsight.transforms import preprocess

    ds = open_seg_dataset(data)
    values = sorted(ds.label_names)
    lookup = np.zeros(max(values) + 1, dtype=np.int64)
    lookup[values] = np.arange(len(values))
    prep = PreprocessConfig(size=list(size), channels=channels, normalize="minmax")
    images, masks = [], []
    for item in track(ds.items, description="pairs", enabled=progress):
        sample, labels, _ = ds.read(item)
        if sample.array.ndim != 3:
            raise DatasetError(item.image, "is not a 2D image", "Pix2Pix here makes 2D images; use 2D pairs")
        image, mask = preprocess(sample, prep, mask=labels)
        images.append(image)
        masks.append(lookup[mask])
    if len(images) < 2:
        raise DatasetError(data, f"has {len(images)} image/mask pair(s)", "train Pix2Pix on at least 2 pairs")
    return (torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(masks)),
            [ds.label_names[v] for v in values])


def train_pix2pix(data: str | Path, *, out: Path, size: tuple[int, ...] = (64, 64), channels: int = 1,
                  epochs: int = 100, batch_size: int = 8, lr: float = 2e-4, width: int = 32, l1_weight: float = 100.0,
                  seed: int = 0, resume: bool = False, progress: bool = True) -> Path:
    """Train Pix2Pix on the image/mask pairs of a segmentation set; returns ``OUT/generator``.

    Raises:
        ConfigError: a size outside 28..64 or not a multiple of 8.
        DatasetError: not a segmentation set, fewer than 2 pairs, or 3D images.
    """
    size2 = check_size(tuple(size))
    if any(n % 2**DEPTH for n in size2):
        raise ConfigError(f"size={list(size2)}", f"Pix2Pix needs sides that are multiples of {2**DEPTH}",
                          "pass --size 32, 48 or 64")
    images, masks, label_names = load_pairs(data, size=size2, channels=channels, progress=progress)
    torch.manual_seed(seed)
    k = len(label_names)
    gen = UNetGenerator(num_labels=k, channels=channels, width=width)
    disc = PatchDiscriminator(num_labels=k, channels=channels, width=width)
    bce = nn.BCEWithLogitsLoss()

    def d_loss(real: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        cond = one_hot(masks, k)
        with torch.no_grad():
            fake = gen(cond)
        real_logits, fake_logits = disc(cond, real), disc(cond, fake)
        return 0.5 * (bce(real_logits, torch.ones_like(real_logits)) + bce(fake_logits, torch.zeros_like(fake_logits)))

    def g_loss(real: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        cond = one_hot(masks, k)
        fake = gen(cond)
        logits = disc(cond, fake)
        return bce(logits, torch.ones_like(logits)) + l1_weight * (fake - real).abs().mean()

    from medsight.gan.dcgan import _provenance

    info = GeneratorInfo(kind="pix2pix", size=list(size2), channels=channels, label_names=label_names,
                         net={"width": width}, provenance=_provenance(data, len(images), seed, l1_weight=l1_weight))
    task = AdversarialTask(gen, disc, images * 2 - 1, masks, d_loss, g_loss)
    fit_adversarial(task, info, out=Path(out), epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                    resume=resume, progress=progress)
    return Path(out) / "generator"


def translate(generator: str | Path, masks: np.ndarray) -> np.ndarray:
    """Images for label maps ``(N, H, W)`` holding indices ``0..K-1``: ``(N, C, H, W)`` float32 in ``[0, 1]``.

    Raises:
        ConfigError: not a pix2pix generator, masks of another size, or a label index it does not know.
    """
    net, info = load_generator(generator)
    if info.kind != "pix2pix":
        raise ConfigError(generator, f"is a {info.kind} generator; it makes images from labels, not masks",
                          "use --n and --label without --masks")
    masks = np.asarray(masks)
    if masks.ndim != 3 or list(masks.shape[1:]) != info.size:
        raise ConfigError("masks", f"have shape {list(masks.shape)}, the generator makes {info.size} images",
                          f"pass masks of {info.size[0]}x{info.size[1]} pixels")
    if masks.size and (masks.min() < 0 or masks.max() >= len(info.label_names)):
        raise ConfigError("masks", f"hold values outside 0..{len(info.label_names) - 1} "
                          f"(labels {info.label_names})", "pass label maps with the generator's label values")
    with torch.no_grad():
        return to_unit_range(net(one_hot(torch.from_numpy(masks), len(info.label_names)))).numpy()


def read_masks(folder: str | Path, size: list[int]) -> tuple[np.ndarray, list[Path]]:
    """The mask files in ``folder`` resized (nearest) to ``size``: ``(label maps, files)``; 0/255 masks become 0/1.

    Raises:
        DatasetError: no image files in the folder.
    """
    from medsight.config import PreprocessConfig
    from medsight.io import is_image_file, read_image
    from medsight.transforms import preprocess

    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p)) if folder.is_dir() else []
    if not files:
        raise DatasetError(folder, "holds no mask image files", "pass a folder of mask PNGs (or NIfTI) to translate")
    prep = PreprocessConfig(size=list(size), channels=1, normalize="none")
    masks = []
    for path in files:
        sample = read_image(path)
        labels = np.rint(sample.array[0]).astype(np.int64)
        if labels.max(initial=0) == 255 and set(np.unique(labels).tolist()) <= {0, 255}:
            labels = labels // 255
        masks.append(preprocess(sample, prep, mask=labels)[1])
    return np.stack(masks), files
