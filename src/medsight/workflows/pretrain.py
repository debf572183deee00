"""``medsight pretrain``: weights for transfer learning, made from the user's own data.

Two modes, both writing ``OUT/weights.safetensors`` (loadable with ``model.pretrained``)
and ``OUT/pretrain.json`` (what was done, on which data, and the loss per epoch):

* ``supervised``: an ordinary training run (``OUT/run/``) on a labelled source data set;
  its best weights, head included, are copied out.
* ``simclr``: self-supervised contrastive learning (SimCLR, Chen et al. 2020) on unlabelled
  images. Each image gives two views (random resized crop, horizontal flip, brightness and
  contrast jitter, Gaussian noise; torch only, parameters drawn from a seeded generator); the
  encoder (the model without its head) and a two-layer projection head are trained with the
  NT-Xent loss. The projection head is dropped at save: the file holds the encoder only, so
  loading it re-initialises the head. It trains with the one training loop
  (:func:`medsight.training.loop.fit`): ``OUT/run/`` holds its checkpoint, ``metrics.csv`` and
  TensorBoard log.

Unlabelled images come from any reader: folders (searched recursively) of PNG/JPEG/TIFF,
DICOM or NIfTI files (3D volumes give their slices), single files, and MedMNIST-style
``.npz`` archives, of which every ``*_images`` array is used **except** ``test_*``, which is
never read; likewise files under a folder named ``test`` are never read (withheld splits).

Example:
    >>> run_pretrain(data=["pneumoniamnist.npz", "brain_mri/"], out=Path("pre"), mode="simclr",
    ...              model="compact_cnn", size=28, epochs=20)
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medsight.atomic_write import atomic_write_bytes, atomic_write_text
from medsight.config import PreprocessConfig, TrainConfig
from medsight.errors import ConfigError, DatasetError, MedsightError

MODES = ("supervised", "simclr")
MAX_SLICES = 16  # slices taken from one 3D volume, evenly spaced


def run_pretrain(
    *,
    data: Sequence[str | Path],
    out: Path,
    mode: str,
    model: str = "compact_cnn",
    model_kwargs: dict[str, Any] | None = None,
    size: int = 28,
    channels: int = 1,
    epochs: int = 20,
    batch_size: int = 256,
    lr: float = 1e-3,
    temperature: float = 0.5,
    seed: int = 0,
    recipe: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Pretrain ``model`` and write ``out/weights.safetensors`` and ``out/pretrain.json``.

    Args:
        data: ``supervised``: one labelled data set (any ``medsight train`` layout);
            ``simclr``: one or more folders, image files or ``.npz`` archives.
        out: the output folder.
        mode: ``supervised`` or ``simclr``.
        model: a registered 2D classifier; ``model_kwargs`` its keyword arguments.
        size: images are resized to ``size x size``; ``channels`` as in ``preprocess.channels``.
        epochs, batch_size, lr, seed: the training budget (``simclr``: AdamW + cosine schedule).
        temperature: the NT-Xent temperature (``simclr``).
        recipe: a ``medsight train`` recipe under the other settings (``supervised``).
        progress: the training loop's progress display (one line per epoch off a terminal).

    Returns:
        The contents of ``pretrain.json``.

    Raises:
        ConfigError: an unknown mode, or ``supervised`` with other than one data set.
        DatasetError: no usable image.
    """
    if mode not in MODES:
        raise ConfigError(f"--mode {mode}", "unknown pretraining mode", f"use one of {', '.join(MODES)}")
    if not data:
        raise ConfigError("DATA", "no data given", "pass at least one folder, image file or .npz")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    preprocess = PreprocessConfig(size=[size, size], channels=channels, normalize="minmax")
    kwargs = dict(model_kwargs or {})
    if mode == "supervised":
        info = _supervised(data, out, model=model, kwargs=kwargs, preprocess=preprocess, epochs=epochs,
                           batch_size=batch_size, lr=lr, seed=seed, recipe=recipe, progress=progress)
    else:
        info = _simclr(data, out, model=model, kwargs=kwargs, preprocess=preprocess, epochs=epochs,
                       batch_size=batch_size, lr=lr, temperature=temperature, seed=seed, progress=progress)
    info = {"mode": mode, "model": model, "model_kwargs": kwargs, "preprocess": preprocess.model_dump(),
            "data": [str(d) for d in data], "epochs": epochs, "seed": seed,
            "weights": str(out / "weights.safetensors"), **info}
    atomic_write_text(out / "pretrain.json", json.dumps(info, indent=2))
    return info


def _supervised(data, out: Path, *, model, kwargs, preprocess, epochs, batch_size, lr, seed, recipe, progress):
    from medsight.config import load_config
    from medsight.workflows.train import run_training

    if len(data) != 1:
        raise ConfigError("DATA", f"supervised pretraining takes one labelled data set, got {len(data)}",
                          "pass one data set, or use --mode simclr for several unlabelled sources")
    cfg = load_config(recipe=recipe, overrides={
        "name": "pretrain", "data.path": str(data[0]), "model.name": model, "model.kwargs": kwargs,
        "preprocess.size": preprocess.size, "preprocess.channels": preprocess.channels,
        "train.epochs": epochs, "train.batch_size": batch_size, "train.lr": lr, "train.seed": seed,
        "eval.bootstrap": 0,
    })
    summary = run_training(cfg, out=out / "run", progress=progress)
    atomic_write_bytes(out / "weights.safetensors", (out / "run" / "model" / "weights.safetensors").read_bytes())
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    return {"source_run": str(out / "run"), "summary": summary,
            "source_metrics": {k: metrics[k] for k in ("split", "n", "auc", "accuracy") if k in metrics}}


def collect_unlabelled(sources: Sequence[str | Path], preprocess: PreprocessConfig) -> tuple[torch.Tensor, dict]:
    """Every usable 2D image (or volume slice) in ``sources``, preprocessed: ``(N, C, H, W)`` float32.

    Returns:
        ``(images, info)``; ``info`` gives the count per source and the files that could not be read.

    Raises:
        DatasetError: a source that does not exist, or no image at all.
    """
    from medsight.transforms.preprocess import preprocess as run_preprocess

    arrays: list[np.ndarray] = []
    counts: dict[str, int] = {}
    skipped: list[dict[str, str]] = []
    for source in sources:
        path = Path(source)
        before = len(arrays)
        if path.suffix.lower() == ".npz":
            arrays += _npz_images(path, preprocess, run_preprocess)
        elif path.is_dir() or path.is_file():
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            for file in files:
                if "test" in file.relative_to(path).parts[:-1]:
                    continue  # a withheld test split is never read
                arrays += _file_images(file, preprocess, run_preprocess, skipped)
        else:
            raise DatasetError(path, "no such file or folder", "check the DATA paths")
        counts[str(path)] = len(arrays) - before
    if not arrays:
        raise DatasetError(", ".join(map(str, sources)), "no readable 2D image or volume slice",
                           "pass folders of PNG/JPEG/DICOM/NIfTI files or .npz archives")
    return torch.from_numpy(np.stack(arrays)), {"images_per_source": counts, "skipped_files": skipped}


def _npz_images(path: Path, preprocess: PreprocessConfig, run_preprocess) -> list[np.ndarray]:
    from medsight.sample import Sample

    if not path.is_file():
        raise DatasetError(path, "no such file", "check the DATA paths")
    images = []
    with np.load(path, allow_pickle=False) as archive:
        keys = [k for k in archive.files if k.endswith("_images") and not k.startswith("test")]
        if not keys:
            raise DatasetError(path, "holds no *_images array (test_* is never read)", "pass a MedMNIST .npz")
        for key in keys:
            for image in archive[key]:
                array = np.asarray(image, dtype=np.float32)
                array = np.moveaxis(array, -1, 0) if array.ndim == 3 else array[np.newaxis]
                images.append(run_preprocess(Sample(np.ascontiguousarray(array), spacing=(1.0, 1.0)), preprocess))
    return images


def _file_images(file: Path, preprocess: PreprocessConfig, run_preprocess, skipped: list) -> list[np.ndarray]:
    from medsight.io import is_image_file, read_image
    from medsight.sample import Sample

    if not is_image_file(file):
        return []
    try:
        sample = read_image(file)
    except MedsightError as exc:
        skipped.append({"file": str(file), "reason": str(exc)})
        return []
    array = sample.array
    if array.ndim == 3:
        return [run_preprocess(sample, preprocess)]
    axis = 3 if sample.meta.get("format") == "nifti" else 1  # NIfTI (i, j, k): axial slices along k
    picks = np.unique(np.linspace(0, array.shape[axis] - 1, min(MAX_SLICES, array.shape[axis])).round().astype(int))
    return [run_preprocess(Sample(np.ascontiguousarray(np.take(array, i, axis=axis)), spacing=(1.0, 1.0)), preprocess)
            for i in picks]


def two_views(images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independently augmented views of a batch ``(N, C, H, W)`` with values in ``[0, 1]``."""
    return _augment(images, generator), _augment(images, generator)


def _augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random resized crop (40-100 % of the area), flip, brightness/contrast jitter, Gaussian noise."""
    n = len(images)

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    scale = uniform(0.4, 1.0).sqrt()
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = scale * flip
    theta[:, 1, 1] = scale
    theta[:, 0, 2] = uniform(-1, 1) * (1 - scale)
    theta[:, 1, 2] = uniform(-1, 1) * (1 - scale)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    views = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    contrast = uniform(0.7, 1.3).view(n, 1, 1, 1)
    brightness = uniform(-0.2, 0.2).view(n, 1, 1, 1)
    mean = views.mean(dim=(1, 2, 3), keepdim=True)
    views = (views - mean) * contrast + mean + brightness
    noise = torch.randn(views.shape, generator=generator) * uniform(0.0, 0.05).view(n, 1, 1, 1)
    return views + noise


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """The NT-Xent loss of SimCLR: each view must pick its partner among the other ``2N - 1`` views."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), float("-inf"))
    n = len(z1)
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(sim, targets)


def encoder_and_projection(model_name: str, kwargs: dict, channels: int) -> tuple[nn.Module, nn.Module]:
    """The registered model with its head replaced by an identity, and a 2-layer projection head."""
    from medsight.models import create_model
    from medsight.models.pretrained import head_name

    encoder = create_model(model_name, in_channels=channels, num_outputs=2, spatial_dims=2, **kwargs)
    head = head_name(encoder)
    if head is None:
        raise ConfigError(f"--model {model_name}", "has no linear head to replace", "choose a classifier")
    features = encoder.get_submodule(head).in_features
    parent, _, leaf = head.rpartition(".")
    setattr(encoder.get_submodule(parent) if parent else encoder, leaf, nn.Identity())
    projection = nn.Sequential(nn.Linear(features, features), nn.ReLU(inplace=True), nn.Linear(features, 128))
    return encoder, projection


def _simclr(sources, out: Path, *, model, kwargs, preprocess, epochs, batch_size, lr, temperature, seed, progress):
    """SimCLR with the one training loop (:func:`medsight.training.loop.fit`), which checkpoints and logs
    into ``out/run/``; the encoder's last weights (not a best epoch's: there is no validation) are saved."""
    from safetensors.torch import save

    from medsight.runtime.device import pick_device
    from medsight.training.loop import Task, fit

    images, info = collect_unlabelled(sources, preprocess)
    if len(images) < 2:
        raise DatasetError(", ".join(map(str, sources)), "SimCLR needs at least 2 images", "add images")
    torch.manual_seed(seed)
    encoder, projection = encoder_and_projection(model, kwargs, preprocess.channels)
    device = pick_device("auto")
    net = nn.Sequential(encoder, projection).to(device)
    batch = min(batch_size, len(images))
    cfg = TrainConfig(epochs=epochs, batch_size=batch, lr=lr, schedule="cosine", early_stopping_metric="train_loss",
                      amp=False, seed=seed)
    task = Task(net=_BothViews(net), optimizer=torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4),
                loss=lambda z, _: nt_xent(z[0], z[1], temperature), batches=_ViewBatches(images, batch, seed),
                validate=None, metrics=("train_loss",))
    started = time.perf_counter()
    result = fit(task, cfg=cfg, device=device, run_dir=out / "run", progress=progress)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    atomic_write_bytes(out / "weights.safetensors", save(state))
    history = [{"epoch": int(row["epoch"]), "loss": row["train_loss"]} for row in result.history]
    return {"n_images": len(images), "temperature": temperature, "batch_size": batch, "lr": lr,
            "seconds": round(time.perf_counter() - started, 1), "history": history, **info}


class _BothViews(nn.Module):
    """The encoder and projection head on both views of a batch: ``(2, N, C, H, W) -> (2, N, 128)``, one
    forward pass per view (as SimCLR's batch statistics are per view)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.net(views[0]), self.net(views[1])])


class _ViewBatches:
    """Each epoch: the images in a random order, in batches of ``batch`` (the short last one dropped), each
    batch as two augmented views, all drawn from one generator seeded once with ``seed``.

    The checkpoint keeps the generator's state now and at the start of the epoch, so a resumed run (and
    one its time limit cut inside an epoch) draws the same orders and views as an unbroken one.
    """

    def __init__(self, images: torch.Tensor, batch: int, seed: int) -> None:
        self.images, self.items = images, batch
        self.steps = len(images) // batch
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch_start = self.generator.get_state()

    def epoch(self, epoch: int, skip: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if skip:  # a cut epoch: its order and the views of its first steps are drawn again
            self.generator.set_state(self.epoch_start)
        self.epoch_start = self.generator.get_state()
        order = torch.randperm(len(self.images), generator=self.generator)
        for index in range(self.steps):
            start = index * self.items
            views = torch.stack(two_views(self.images[order[start : start + self.items]], self.generator))
            if index >= skip:
                yield views, torch.zeros(self.items)

    def state_dict(self) -> dict[str, Any]:
        def text(state: torch.Tensor) -> str:
            return base64.b64encode(state.numpy().tobytes()).decode()

        return {"generator": text(self.generator.get_state()), "epoch_start": text(self.epoch_start)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        def tensor(text: str) -> torch.Tensor:
            return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)

        self.generator.set_state(tensor(state["generator"]))
        self.epoch_start = tensor(state["epoch_start"])
