"""The generator folder: the weights plus what is needed to use them anywhere.

A generator folder is::

    generator/
      generator.safetensors   the generator's state dict (never a pickle)
      gan.json                kind (dcgan or pix2pix), network settings, image size, channels,
                              label names (class names for dcgan, mask values for pix2pix),
                              the output range and provenance

The networks are :mod:`medsight.models.generators`; their training is :mod:`medsight.gan`.

Example:
    >>> net, info = load_generator("runs/gan/generator")
    >>> info.kind, info.size, info.label_names
    ('dcgan', [28, 28], ['malignant', 'normal_or_benign'])
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medsight.errors import BundleError, ConfigError
from medsight.models.generators import DCGANGenerator, UNetGenerator

WEIGHTS = "generator.safetensors"
MANIFEST = "gan.json"
FORMAT = "medsight-gan/1"
KINDS = ("dcgan", "pix2pix")


@dataclass
class GeneratorInfo:
    """What ``gan.json`` holds.

    Attributes:
        kind: ``dcgan`` (class-conditional, noise -> image) or ``pix2pix`` (mask -> image).
        size: spatial size ``[height, width]`` of the images it makes.
        channels: image channels.
        label_names: class names in label order (dcgan) or mask label names in value order (pix2pix).
        net: keyword arguments of the generator network (width, latent size...).
        normalize: the preprocessing the training images had (always ``minmax``: ``[0, 1]``).
        provenance: data, epochs, seed, versions.
    """

    kind: str
    size: list[int]
    channels: int
    label_names: list[str]
    net: dict[str, Any] = field(default_factory=dict)
    normalize: str = "minmax"
    provenance: dict[str, Any] = field(default_factory=dict)

    def label_index(self, label: str | int) -> int:
        """The index of a label given by name or number.

        Raises:
            ConfigError: the label is not one of the generator's.
        """
        text = str(label)
        if text in self.label_names:
            return self.label_names.index(text)
        if text.isdigit() and int(text) < len(self.label_names):
            return int(text)
        raise ConfigError(
            f"label {text!r}", f"is not a label of this generator (labels: {self.label_names})",
            "pass one of those names or its index 0.." + str(len(self.label_names) - 1),
        )


def build_generator(info: GeneratorInfo):
    """The generator network described by ``info`` (random weights)."""
    if info.kind == "dcgan":
        return DCGANGenerator(
            num_classes=len(info.label_names), channels=info.channels, size=tuple(info.size), **info.net
        )
    return UNetGenerator(num_labels=len(info.label_names), channels=info.channels, **info.net)


def save_generator(folder: str | Path, state_dict: dict, info: GeneratorInfo) -> Path:
    """Write ``generator.safetensors`` and ``gan.json`` into ``folder`` (weights first, manifest last), each
    whole or not at all.

    Raises:
        OutputWriteError: the disk is full, or the folder is not writable; older files stay as they were.
    """
    from safetensors.torch import save_file

    from medsight.atomic_write import atomic_write_bytes, replacing

    folder = Path(folder)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    with replacing(folder / WEIGHTS) as tmp:
        save_file(tensors, str(tmp))
    atomic_write_bytes(folder / MANIFEST, json.dumps({"format": FORMAT, **asdict(info)}, indent=2).encode())
    return folder


def read_info(folder: str | Path) -> GeneratorInfo:
    """Read ``gan.json`` of a generator folder.

    Raises:
        BundleError: no folder, no ``gan.json``, invalid JSON, or not a medsight generator.
    """
    folder = Path(folder)
    path = folder / MANIFEST
    fix = "pass the generator folder that medsight gan train wrote (OUT/generator)"
    if not path.is_file():
        raise BundleError(folder, f"no {MANIFEST} here, so it is not a generator folder", fix)
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(path, f"not valid JSON ({exc})", fix) from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT or raw.get("kind") not in KINDS:
        raise BundleError(path, f"is not a {FORMAT} manifest of kind {' or '.join(KINDS)}", fix)
    try:
        return GeneratorInfo(
            kind=raw["kind"], size=[int(n) for n in raw["size"]], channels=int(raw["channels"]),
            label_names=[str(n) for n in raw["label_names"]], net=dict(raw.get("net") or {}),
            normalize=str(raw.get("normalize", "minmax")), provenance=dict(raw.get("provenance") or {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(path, f"is missing or has a bad entry ({exc})", fix) from exc


def load_generator(folder: str | Path):
    """The generator network with its weights, in eval mode, and its :class:`GeneratorInfo`.

    Raises:
        BundleError: a missing or unreadable manifest or weights file, or weights that do not fit.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    info = read_info(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise BundleError(folder, f"{WEIGHTS} is missing", "copy the whole generator folder")
    net = build_generator(info)
    try:
        net.load_state_dict(load_file(str(weights)))
    except Exception as exc:  # safetensors and load_state_dict raise their own error types
        raise BundleError(weights, f"the weights do not load ({str(exc).splitlines()[0]})",
                          "copy the generator folder again or retrain it") from exc
    return net.eval(), info


def write_pngs(images, out: str | Path, names: list[str]) -> list[Path]:
    """Write ``(N, C, H, W)`` images in ``[0, 1]`` as 8-bit PNGs ``out/<name>.png`` (first channel, or RGB)."""
    import numpy as np
    from PIL import Image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for image, name in zip(images, names, strict=True):
        pixels = np.rint(np.clip(np.asarray(image), 0, 1) * 255).astype(np.uint8)
        picture = Image.fromarray(np.moveaxis(pixels[:3], 0, -1)) if pixels.shape[0] >= 3 else Image.fromarray(
            pixels[0], mode="L")
        path = out / f"{name}.png"
        picture.save(path, format="PNG")
        paths.append(path)
    return paths
