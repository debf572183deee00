"""Real samples for the export checks, the PyTorch reference on them, and the comparisons.

Classification: the validation split of the data the bundle was trained on (or ``--data``),
rebuilt from the seed and fractions stored in the bundle, preprocessed up to the graph's
input. Segmentation: random patches of the bundle's patch size from validation cases,
normalised as the bundle says, plus one patch twice as tall to exercise the dynamic spatial
axes.

Example:
    >>> parity = load_parity_data(bundle, Path("runs/demo/model"), data=None)
    >>> check_parity(lambda x: session.run(["probabilities"], {"image": x})[0], parity)["max_abs_diff"]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsight.bundle import Bundle
from medsight.config import PreprocessConfig
from medsight.errors import DatasetError
from medsight.export.errors import ExportError

#: ``(N, C, *spatial)`` float32 input batch -> ``(N, K, ...)`` probabilities.
Runner = Callable[[np.ndarray], np.ndarray]
BATCH = 32
SEG_CASES = 4
SEG_PATCHES_PER_CASE = 2
SEG_BATCH = 4


@dataclass
class ParityData:
    """Graph inputs from real images with the PyTorch probabilities and the true labels.

    ``inputs`` ``(N, C, *size)``; ``reference`` the bundle's probabilities on them, computed
    the way medsight predicts without an export; ``labels`` class indices ``(N,)`` or label
    patches ``(N, *size)``; ``extra`` more ``(input, reference)`` pairs of other shapes.
    """

    inputs: np.ndarray
    reference: np.ndarray
    labels: np.ndarray
    source: str
    extra: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)


def load_parity_data(
    bundle: Bundle, folder: Path, *, data: str | None, input_preprocess: PreprocessConfig, progress: bool = False
) -> ParityData:
    """Real samples for ``bundle``, from ``data`` or the data path recorded at training.

    Raises:
        DatasetError: no reachable data, other classes than the model's, an empty validation split.
        MedsightError: unreadable files (as training would report them).
    """
    path = _data_path(bundle, folder, data)
    if bundle.task == "segmentation":
        return _segmentation_patches(bundle, path)
    return _classification_split(bundle, path, input_preprocess, progress)


def member_parity(parity: ParityData, member) -> ParityData:
    """``parity``'s segmentation inputs with one fold-ensemble member's PyTorch softmax as the reference."""
    import torch

    def reference(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return torch.softmax(member(torch.from_numpy(x)).float(), dim=1).numpy()

    return ParityData(parity.inputs, run_batched(reference, parity.inputs, SEG_BATCH), parity.labels,
                      parity.source, [(x, reference(x)) for x, _ in parity.extra])


def run_batched(run: Runner, inputs: np.ndarray, batch: int = BATCH) -> np.ndarray:
    """``run`` over ``inputs`` in chunks of ``batch``."""
    return np.concatenate([run(inputs[i : i + batch]) for i in range(0, len(inputs), batch)])


def check_parity(run: Runner, parity: ParityData, *, tolerance: float | None = None) -> dict:
    """Largest absolute probability difference from the PyTorch reference, at batch 1 and at full batches.

    Raises:
        ExportError: the difference exceeds ``tolerance`` (when one is given).
    """
    batch = BATCH if parity.labels.ndim == 1 else SEG_BATCH
    probs = run_batched(run, parity.inputs, batch)
    single = run(parity.inputs[:1])
    diffs = [np.abs(probs - parity.reference).max(), np.abs(single - parity.reference[:1]).max()]
    shapes = {tuple(parity.inputs.shape[1:])}
    for inputs, reference in parity.extra:
        diffs.append(np.abs(run(inputs) - reference).max())
        shapes.add(tuple(inputs.shape[1:]))
    result = {
        "samples": len(parity.inputs),
        "source": parity.source,
        "batch_sizes": sorted({1, min(batch, len(parity.inputs))}),
        "input_shapes": [list(s) for s in sorted(shapes)],
        "max_abs_diff": float(max(diffs)),
        "tolerance": tolerance,
    }
    if tolerance is not None and result["max_abs_diff"] > tolerance:
        raise ExportError(
            "export parity",
            f"the exported model's probabilities differ from PyTorch's by up to {result['max_abs_diff']:.3g} "
            f"on {result['samples']} samples ({parity.source}), above the {tolerance:g} allowed",
            "nothing was written; report the model and this message",
        )
    return {**result, "probabilities": probs}


def metric_value(bundle: Bundle, parity: ParityData, probs: np.ndarray, metric: str) -> float:
    """The validation ``metric`` of ``probs``: a classification metric at the bundle's threshold,
    or (segmentation) the pooled foreground Dice of the argmax over the parity patches."""
    if bundle.task == "segmentation":
        return _pooled_dice(probs.argmax(axis=1), parity.labels, probs.shape[1])
    from medsight.classification.metrics import classification_metrics

    return float(classification_metrics(parity.labels, probs, bundle.threshold)[metric])


def _data_path(bundle: Bundle, folder: Path, data: str | None) -> Path:
    recorded = bundle.data.path
    path = data or recorded
    if path and Path(path).exists():
        return Path(path)
    what = f"--data {data} does not exist" if data else (
        f"the training data recorded in the bundle ({recorded}) is not reachable" if recorded
        else "the bundle records no training data"
    )
    raise DatasetError(
        folder,
        f"no real images to check the export on: {what}",
        "pass --data PATH (the data set the model was trained on, or another with the same classes)",
    )


def _classification_split(bundle: Bundle, path: Path, prep: PreprocessConfig, progress: bool) -> ParityData:
    import torch

    from medsight.classification.prepare import load_tensors
    from medsight.classification.split import bundle_split
    from medsight.inference.predictor import Predictor
    from medsight.transforms.intensity import normalize

    ds, data_cfg, val = bundle_split(bundle, path, "val")
    tensors, bad = load_tensors(ds, val, prep, on_bad_file=data_cfg.on_bad_file, progress=progress, desc="val")
    inputs = tensors.images.numpy()
    # the bundle's own normalisation, applied exactly as medsight.transforms.preprocess applies it
    normalised = np.stack([normalize(x, bundle.preprocess.normalize) for x in inputs]).astype(np.float32)
    reference = Predictor(bundle, backend="torch").predict_tensors(torch.from_numpy(normalised))
    skipped = f", {len(bad)} unreadable skipped" if bad else ""
    return ParityData(inputs, reference, tensors.labels.numpy(), f"val split of {path}: {len(inputs)} images{skipped}")


def _segmentation_patches(bundle: Bundle, path: Path) -> ParityData:
    import torch

    from medsight.data.seg_layouts import open_seg_dataset
    from medsight.inference.segmenter import Segmenter

    dataset = open_seg_dataset(path, label_names=dict(enumerate(bundle.label_names)))
    val = set(bundle.split.of("val"))
    items = ([item for item in dataset.items if item.case_id in val] or dataset.items)[:SEG_CASES]
    segmenter = Segmenter(bundle)
    size = [int(s) for s in bundle.preprocess.size]
    rng = np.random.default_rng(0)
    images, labels, tall = [], [], None
    for item in items:
        sample, truth, _ = dataset.read(item)
        image = segmenter.prepare(sample)
        truth = np.zeros(image.shape[1:], np.int64) if truth is None else truth
        for _ in range(SEG_PATCHES_PER_CASE):
            patch, label = _random_patch(image, truth, size, rng)
            images.append(patch)
            labels.append(label)
        if tall is None:
            tall = _random_patch(image, truth, [2 * size[0], *size[1:]], rng)[0][None]
    inputs = np.stack(images)

    def reference(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return torch.softmax(segmenter.model(torch.from_numpy(x)).float(), dim=1).numpy()

    source = f"{len(inputs)} random {'x'.join(map(str, size))} patches from {len(items)} case(s) of {path}"
    return ParityData(
        inputs, run_batched(reference, inputs, SEG_BATCH), np.stack(labels), source, [(tall, reference(tall))]
    )


def _random_patch(
    image: np.ndarray, truth: np.ndarray, size: list[int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A random ``size`` window of ``image`` (C, *spatial) and ``truth``; zero-padded where the image is smaller."""
    pad = [(0, max(0, s - n)) for s, n in zip(size, image.shape[1:], strict=True)]
    image = np.pad(image, [(0, 0), *pad])
    truth = np.pad(truth, pad)
    starts = [int(rng.integers(0, n - s + 1)) for s, n in zip(size, image.shape[1:], strict=True)]
    window = tuple(slice(b, b + s) for b, s in zip(starts, size, strict=True))
    return np.ascontiguousarray(image[(slice(None), *window)], np.float32), truth[window]


def _pooled_dice(pred: np.ndarray, truth: np.ndarray, classes: int) -> float:
    """Mean over foreground classes of the Dice pooled over every patch (NaN for a class absent from both)."""
    scores = []
    for c in range(1, classes):
        p, t = pred == c, truth == c
        total = p.sum() + t.sum()
        scores.append(2.0 * (p & t).sum() / total if total else np.nan)
    return float(np.nanmean(scores)) if not np.isnan(scores).all() else float("nan")
