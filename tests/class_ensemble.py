"""A tiny classification fold ensemble for the tests of its consumers (evaluate, predict, explain, export,
serve, the registry, retrain).

:func:`class_ensemble` trains the two folds of a 2-fold cross-validation on 16 px pictures
(:func:`write_squares`: a bright square makes a ``nodule``; compact_cnn of width 8, 4 epochs, seeded,
about 10 s) and assembles their bundles into one ``fold_ensemble`` classification bundle with
:func:`medsight.bundle.build_bundle`, the members' weights under ``members.{k}.``
(:func:`medsight.training.folds.member_weights`), as ``medsight train --folds 2`` writes ``RUN/model``.
The ensemble gets a temperature and threshold of its own (1.7 and 0.45), so a consumer that ignored
them, or used member 0's, would be caught. It is built once per process; tests that write into a
bundle folder (export, registry) copy it first.

Example:
    >>> built = class_ensemble(tmp_path_factory)
    >>> built.bundle, built.members, built.data
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: the ensemble's own calibration temperature and operating threshold
TEMPERATURE = 1.7
THRESHOLD = 0.45


@dataclass(frozen=True)
class BuiltEnsemble:
    """The ensemble bundle folder, its members' bundle folders (fold order) and the phantom data set."""

    bundle: Path
    members: list[Path]
    data: Path


_BUILT: dict[str, BuiltEnsemble] = {}


def class_ensemble(tmp_path_factory) -> BuiltEnsemble:
    """The ensemble of this test process, trained and written on first use."""
    if "ensemble" not in _BUILT:
        _BUILT["ensemble"] = build_class_ensemble(tmp_path_factory.mktemp("class_ensemble"))
    return _BUILT["ensemble"]


def build_class_ensemble(root: Path, *, folds: int = 2) -> BuiltEnsemble:
    """Train ``folds`` fold members on phantoms under ``root`` and write ``root/run/model``, their ensemble."""
    from medsight.bundle import build_bundle, load_bundle, provenance
    from medsight.bundle_fields import DataSettings, ThresholdChoice
    from medsight.classification.train import train_classifier
    from medsight.config import load_config
    from medsight.data.layouts import open_dataset
    from medsight.training.folds import ensemble_model, fold_runs, member_weights

    data = write_squares(root / "squares", n_per_class=12, seed=0)
    cfg = load_config(recipe="demo", overrides={
        "data.path": str(data), "data.folds": folds, "preprocess.size": [16, 16], "model.kwargs": {"width": 8},
        "train.epochs": 4, "train.batch_size": 4, "train.lr": 0.005, "train.early_stopping_metric": "val_loss",
        "train.seed": 0, "eval.bootstrap": 0,
    })
    ds = open_dataset(data, class_names=cfg.data.class_names)
    runs = fold_runs(cfg, root / "run", resume=False)
    for run in runs:
        train_classifier(run.config, ds, out=run.folder, resume=False, progress=False)
    members = [load_bundle(run.folder / "model") for run in runs]
    first = members[0]
    ensemble = build_bundle(
        task="classification", model=ensemble_model(members), state_dict=member_weights(members),
        preprocess=first.preprocess, label_names=first.label_names, threshold=THRESHOLD, temperature=TEMPERATURE,
        metrics={"oof_auc": 0.5}, provenance=provenance(run="test-ensemble", folds=[{"fold": k} for k in range(folds)]),
        data=DataSettings(path=str(data), hash=first.data.hash, config=first.data.config),
        threshold_choice=ThresholdChoice(note="fixed by the test"),
    )
    folder = ensemble.save(root / "run" / "model")
    return BuiltEnsemble(folder, [run.folder / "model" for run in runs], data)


def write_squares(root: Path, *, n_per_class: int, seed: int, size: int = 16) -> Path:
    """``root/{normal,nodule}/*.png``: grey noise; a ``nodule`` has a bright 5 x 5 square somewhere."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label in ("normal", "nodule"):
        (root / label).mkdir(parents=True)
        for k in range(n_per_class):
            image = rng.normal(80, 15, (size, size))
            if label == "nodule":
                r, c = rng.integers(1, size - 6, 2)
                image[r : r + 5, c : c + 5] += 100
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / label / f"{label}_{k:04d}.png")
    return root


def with_flips(ensemble: Path, out: Path, flips: list[list[int]]) -> Path:
    """A copy of the ensemble bundle that also averages over the flipped views ``flips`` (the same weights)."""
    from dataclasses import replace

    from medsight.bundle import load_bundle

    bundle = load_bundle(ensemble)
    model = bundle.model.model_copy(update={"kwargs": {**bundle.model.kwargs, "flips": flips}})
    return replace(bundle, model=model).save(out)


def sigmoid_ensemble(ensemble: Path, out: Path) -> tuple[Path, list]:
    """A copy of the ensemble bundle with a sigmoid head (one logit per member) and untrained members (seed 0),
    written to ``out``; returns it and the member networks."""
    from dataclasses import replace

    import torch

    from medsight.bundle import load_bundle
    from medsight.models import create_model

    bundle = load_bundle(ensemble)
    torch.manual_seed(0)
    nets = [create_model(bundle.model.kwargs["member"], in_channels=1, num_outputs=1, spatial_dims=2,
                         **bundle.model.kwargs["member_kwargs"]).eval() for _ in range(bundle.model.kwargs["members"])]
    state = {f"members.{k}.{key}": value for k, net in enumerate(nets) for key, value in net.state_dict().items()}
    model = bundle.model.model_copy(update={"head": "sigmoid"})
    return replace(bundle, model=model, state_dict=state).save(out), nets


def member_probabilities(members: list[Path], images, flips: list[list[int]] = ()) -> np.ndarray:
    """The ensemble's calibrated probabilities computed by hand from its members' own bundles:
    ``softmax(log(mean softmax(member_k(view))) / T)`` over the members and the views (the images and
    each of ``flips``), with the ensemble's temperature ``T``, in float64."""
    import torch

    from medsight.bundle import load_bundle

    views = [images, *(torch.flip(images, tuple(axes)) for axes in flips)]
    with torch.no_grad():
        probs = [torch.softmax(load_bundle(m).build_model()(view).double(), dim=1) for m in members for view in views]
        mean = torch.stack(probs).mean(dim=0)
        return torch.softmax(torch.log(mean) / TEMPERATURE, dim=1).numpy()


def prepared(files: list[Path], prep):
    """The files read and preprocessed with ``prep`` (a PreprocessConfig), as one float32 tensor batch."""
    import torch

    from medsight.io import read_image
    from medsight.transforms import preprocess

    return torch.from_numpy(np.stack([preprocess(read_image(path), prep) for path in files]))


def phantom_files(data: Path, n: int = 3) -> list[Path]:
    """The first ``n`` images of each class of the data set."""
    return [path for label in ("normal", "nodule") for path in sorted((data / label).glob("*.png"))[:n]]
