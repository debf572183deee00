"""How good are the generated images? Figures that a reader can check, each labelled for what it is.

* **Classifier Fréchet distance (not Inception FID).** The Fréchet distance between Gaussians
  fitted to the penultimate-layer features (the input of the last linear layer) of a medsight
  classifier bundle trained on the real data, for real validation images and for generated
  images. It is *not* the Inception FID: the feature network is the task's own classifier, so
  the numbers compare generators on this data set only. The same distance between the real
  training and real validation images is reported as the floor two real samples reach.
* **TSTR** (train on synthetic, test on real): a compact CNN trained on generated images only
  (model selection on held-out generated images), scored on the real validation split.
* **Sample grids**: one PNG per label.

Example:
    >>> result = gan_report(generator="runs/gan/generator", data="breastmnist.npz",
    ...                     classifier="runs/breast/model", out=Path("runs/gan/report"))
    >>> result["classifier_frechet_distance"]["all"]
"""

from __future__ import annotations

import json
import math
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from medsight.atomic_write import atomic_write_text, replacing
from medsight.errors import ConfigError

FD_NAME = "classifier Fréchet distance (not Inception FID)"


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature rows ``a`` and ``b``.

    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(5000, 3))
        >>> round(frechet_distance(x, x + [2.0, 0.0, 0.0]), 3)
        4.0
    """
    from scipy import linalg

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mu = a.mean(axis=0) - b.mean(axis=0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    with warnings.catch_warnings():  # few rows for many features: a singular product, handled below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    if not np.isfinite(root).all():
        eps = np.eye(len(cov_a)) * 1e-6
        root = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    return float(max(mu @ mu + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root.real), 0.0))


@contextmanager
def _penultimate(model):
    """Collect the inputs of the model's last linear layer; the hook always removes itself."""
    from torch import nn

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(type(model).__name__, "has no linear layer to take features from",
                          "use a medsight classifier bundle (e.g. compact_cnn)")
    store: list = []
    handle = linears[-1].register_forward_hook(lambda _m, inputs, _out: store.append(inputs[0].detach().cpu()))
    try:
        yield store
    finally:
        handle.remove()


def classifier_features(model, images, *, batch_size: int = 256) -> np.ndarray:
    """Penultimate features ``(N, D)`` of a classifier for ``images`` ``(N, C, H, W)``."""
    import torch

    model.eval()
    with _penultimate(model) as store, torch.no_grad():
        for start in range(0, len(images), batch_size):
            model(images[start: start + batch_size])
    return torch.cat(store).flatten(1).numpy()


def synthetic_set(generator_net, labels: np.ndarray, *, normalize: str, seed: int):
    """A TensorSet of generated images for ``labels``, normalised like the real preprocessing."""
    import torch

    from medsight.classification.batches import TensorSet
    from medsight.models.generators import generate
    from medsight.transforms.intensity import normalize as norm

    lab = torch.as_tensor(labels, dtype=torch.long)
    images = generate(generator_net, lab, seed=seed).numpy()
    images = np.stack([norm(im, normalize) for im in images]).astype(np.float32)
    return TensorSet(torch.from_numpy(images), lab, [f"synthetic#{i}" for i in range(len(lab))])


def train_on_synthetic(generator_net, real_train_labels: np.ndarray, real_val, *, num_classes: int, normalize: str,
                       out: Path, seed: int = 0, epochs: int = 15) -> dict:
    """TSTR: a compact CNN trained on generated images only, scored on the real validation set.

    As many generated training images as real ones, in the real class proportions, plus 20% more
    generated images to choose the best epoch on, so the real validation set is used only to score.
    """
    import torch

    from medsight.classification.metrics import classification_metrics
    from medsight.classification.synthetic import class_quota
    from medsight.classification.trainer import fit
    from medsight.config import TrainConfig
    from medsight.inference.classifier import CalibratedClassifier
    from medsight.models import create_model

    def labels_for(n: int, offset: int):
        quota = class_quota(real_train_labels, num_classes, n)
        return synthetic_set(generator_net, np.repeat(np.arange(num_classes), quota), normalize=normalize,
                             seed=seed + offset)

    n = len(real_train_labels)
    train, val = labels_for(n, 0), labels_for(max(num_classes * 4, n // 5), 1)
    torch.manual_seed(seed)
    model = create_model("compact_cnn", in_channels=train.images.shape[1], num_outputs=num_classes, spatial_dims=2,
                         width=16)
    cfg = TrainConfig(epochs=epochs, batch_size=64, lr=3e-3, seed=seed, early_stopping_metric="accuracy")
    result = fit(model, train, val, cfg=cfg, head="softmax", num_classes=num_classes, run_dir=out, progress=False)
    model.load_state_dict(result.best_state)
    probs = CalibratedClassifier(model, head="softmax").predict(real_val)
    metrics = classification_metrics(real_val.labels.numpy(), probs)
    return {"accuracy": float(metrics["accuracy"]), "auc": float(metrics["auc"]),
            "balanced_accuracy": float(metrics["balanced_accuracy"]), "n_synthetic_train": len(train),
            "n_real_val": len(real_val), "epochs": epochs}


def sample_grids(generator_net, label_names: list[str], out: Path, *, per_label: int = 36, seed: int = 0) -> list[Path]:
    """One PNG grid of ``per_label`` generated images per label: ``out/samples_<label>.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from medsight.models.generators import generate

    out.mkdir(parents=True, exist_ok=True)
    side = math.ceil(math.sqrt(per_label))
    paths = []
    for index, name in enumerate(label_names):
        images = generate(generator_net, torch.full((per_label,), index, dtype=torch.long), seed=seed).numpy()
        fig, axes = plt.subplots(side, side, figsize=(side * 0.9, side * 0.9))
        for ax, k in zip(np.ravel(axes), range(side * side), strict=True):
            ax.axis("off")
            if k < per_label:
                image = images[k]
                ax.imshow(image[0] if image.shape[0] == 1 else np.moveaxis(image[:3], 0, -1), cmap="gray",
                          vmin=0, vmax=1)
        fig.suptitle(f"generated: {name}", fontsize=9)
        path = out / f"samples_{_safe(name)}.png"
        with replacing(path) as tmp:
            fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
        plt.close(fig)
        paths.append(path)
    return paths


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def gan_report(*, generator: str | Path, data: str | Path, classifier: str | Path, out: Path, seed: int = 0,
               tstr_epochs: int = 15, progress: bool = True) -> dict:
    """Quality figures of a class-conditional generator against real data; writes quality.json and report.html.

    Args:
        generator: the generator folder (``medsight gan train``).
        data: the classification data set the generator and the classifier were trained on.
        classifier: a classifier bundle trained on the real data (its features define the distance).
        out: output folder.

    Raises:
        ConfigError: a pix2pix generator, or a generator whose labels, size or channels differ
            from the classifier's.
    """
    from medsight.bundle import load_bundle
    from medsight.classification.prepare import load_tensors
    from medsight.classification.split import bundle_split
    from medsight.inference.predictor import Predictor
    from medsight.models.generator_store import load_generator

    out = Path(out)
    net, info = load_generator(generator)
    model_bundle = load_bundle(classifier)
    prep = model_bundle.preprocess
    if info.kind != "dcgan":
        raise ConfigError(generator, f"is a {info.kind} generator", "the report scores class-conditional generators")
    if info.label_names != model_bundle.label_names or info.size != list(prep.size) or info.channels != prep.channels:
        raise ConfigError(
            generator, f"makes {info.channels}x{info.size} images of {info.label_names}; the classifier takes "
            f"{prep.channels}x{list(prep.size)} images of {model_bundle.label_names}",
            "use a classifier trained on the same data at the generator's size",
        )
    real = {}
    for split in ("train", "val"):
        ds, data_cfg, idx = bundle_split(model_bundle, data, split)
        real[split], _ = load_tensors(ds, idx, prep, on_bad_file=data_cfg.on_bad_file, progress=progress, desc=split)
    model = Predictor(model_bundle).model  # the bundle's network, as every consumer of a bundle builds it
    val_labels = real["val"].labels.numpy()
    fake = synthetic_set(net, val_labels, normalize=prep.normalize, seed=seed)
    feats = {"real_train": classifier_features(model, real["train"].images),
             "real_val": classifier_features(model, real["val"].images),
             "synthetic": classifier_features(model, fake.images)}
    train_labels = real["train"].labels.numpy()
    distances = {"all": frechet_distance(feats["real_val"], feats["synthetic"]),
                 "real_train_vs_real_val": frechet_distance(feats["real_train"], feats["real_val"])}
    for k, name in enumerate(info.label_names):
        if (val_labels == k).sum() > 1:
            distances[name] = frechet_distance(feats["real_val"][val_labels == k], feats["synthetic"][val_labels == k])
    tstr = train_on_synthetic(net, train_labels, real["val"], num_classes=len(info.label_names),
                              normalize=prep.normalize, out=out / "tstr", seed=seed, epochs=tstr_epochs)
    grids = sample_grids(net, info.label_names, out, seed=seed)
    result = {
        "generator": str(generator), "data": str(data), "classifier": str(classifier),
        "feature_network": f"{model_bundle.model.name} penultimate layer",
        "classifier_frechet_distance": distances,
        "classifier_frechet_distance_note": f"{FD_NAME}: real val vs the same number of generated images per "
        "class; real_train_vs_real_val is what two real samples score",
        "distance_over_real_floor": distances["all"] / max(distances["real_train_vs_real_val"], 1e-12),
        "tstr": tstr,
        "trained_on_real_val": {k: v for k, v in model_bundle.metrics.items() if k in ("val_accuracy", "val_auc")},
        "sample_grids": [str(p) for p in grids],
        "n_real_val": len(val_labels), "seed": seed,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "quality.json", json.dumps(result, indent=2))
    _write_html(result, info.label_names, grids, out / "report.html")
    return result


def _write_html(result: dict, label_names: list[str], grids: list[Path], path: Path) -> None:
    from medsight.report.html import Figure, figures, key_values, page, paragraph, section, table

    fd = result["classifier_frechet_distance"]
    body = "\n".join([
        section("What was measured", key_values({k: result[k] for k in (
            "generator", "data", "classifier", "feature_network", "n_real_val", "distance_over_real_floor")})),
        section(FD_NAME[0].upper() + FD_NAME[1:],
                table(["comparison", "distance"], [[k, f"{v:.4g}"] for k, v in fd.items()]),
                paragraph(result["classifier_frechet_distance_note"] + ". Lower is closer. Not comparable with "
                          "Inception FID values from papers.", note=True)),
        section("Train on synthetic, test on real (TSTR)",
                key_values({**result["tstr"], **{f"reference: classifier trained on real, {k}": v
                                                 for k, v in result["trained_on_real_val"].items()}})),
        section("Samples", figures([Figure(p, f"generated {name}", "random draws from the generator, one label "
                                           "per grid") for p, name in zip(grids, label_names, strict=True)])),
    ])
    atomic_write_text(path, page("GAN quality report", body))
