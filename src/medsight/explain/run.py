"""``medsight explain``: heatmap overlays and raw maps for files, the service's PNG, and faithfulness.

For each image: the bundle's preprocessing, the prediction, then the saliency of the
predicted class (or ``target``). The map is interpolated back onto the image's own grid and
written as an overlay PNG (for a volume: the slice where the map peaks) and as the raw map,
``.npy`` for 2D or NIfTI with the image's affine for 3D.

Example:
    >>> explain_files(bundle="runs/demo/model", images=[Path("case.png")], method="gradcam", out=Path("cams"))
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from medsight.atomic_write import atomic_write_text
from medsight.data.file_errors import file_error, one_line
from medsight.errors import ConfigError
from medsight.explain.cam import METHODS, _scaled, check_layer, saliency
from medsight.sample import Sample


def explain_sample(bundle, model, sample: Sample, *, method: str, layer: str | None = None,
                   target: str | None = None) -> dict[str, Any]:
    """Saliency of one decoded image on its own grid: ``{"heat", "label", "target", "probabilities"}``.

    Raises:
        InvalidImageError: a 3D volume for a 2D model, or the reverse.
    """
    import torch

    from medsight.inference.classifier import probs_from_logits
    from medsight.inference.predictor import check_spatial_dims
    from medsight.transforms import preprocess
    from medsight.transforms.preprocess import resize

    _check_request(bundle, target)
    check_spatial_dims(sample, len(bundle.preprocess.size))
    x = torch.from_numpy(preprocess(sample, bundle.preprocess)[None])
    with torch.no_grad():
        probs = probs_from_logits(model(x), bundle.model.head, bundle.temperature)[0]  # calibrated, as predicted
    names = bundle.label_names
    full = probs if len(probs) == len(names) else np.array([1 - probs[0], probs[0]])
    if bundle.threshold is not None and len(names) == 2:
        predicted = int(full[1] >= bundle.threshold)
    else:
        predicted = int(np.argmax(full))
    index = names.index(target) if target is not None else predicted
    heat = saliency(model, x, method=method, target=index, layer=layer, head=bundle.model.head)
    heat = _scaled(np.clip(resize(heat[None], sample.spatial_shape)[0], 0.0, None))  # peak 1 on the image grid
    return {"heat": heat.astype(np.float32), "label": names[predicted], "target": names[index],
            "probabilities": {n: float(p) for n, p in zip(names, full, strict=True)}}


def overlay_png(sample: Sample, heat: np.ndarray, *, alpha: float = 0.45) -> bytes:
    """The image in grey with the heatmap (jet) blended over it, as PNG bytes; volumes: the peak slice."""
    from matplotlib import colormaps
    from PIL import Image

    image = np.asarray(sample.array, dtype=np.float32).mean(axis=0)
    if image.ndim == 3:  # the slice across the last axis (axial for NIfTI) where the map peaks
        index = int(np.argmax(heat.reshape(-1, heat.shape[-1]).max(axis=0)))
        image, heat = image[..., index], heat[..., index]
    low, high = np.percentile(image, [0.5, 99.5])
    grey = np.clip((image - low) / max(high - low, 1e-6), 0, 1)
    colour = colormaps["jet"](heat)[..., :3]
    blended = (1 - alpha * heat[..., None]) * grey[..., None] + alpha * heat[..., None] * colour
    buffer = io.BytesIO()
    Image.fromarray((np.clip(blended, 0, 1) * 255).astype(np.uint8), mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def heatmap_png(heat: np.ndarray) -> bytes:
    """The map alone as an RGBA PNG: jet colours, transparent where the map is 0 (volumes: the peak slice)."""
    from matplotlib import colormaps
    from PIL import Image

    if heat.ndim == 3:
        heat = heat[..., int(np.argmax(heat.reshape(-1, heat.shape[-1]).max(axis=0)))]
    rgba = colormaps["jet"](heat)
    rgba[..., 3] = np.clip(heat, 0, 1)
    buffer = io.BytesIO()
    Image.fromarray((rgba * 255).astype(np.uint8), mode="RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def explain_png(runner, sample: Sample, *, target: str | None = None, method: str = "gradcam") -> bytes:
    """The service's ``/v1/explain``: the Grad-CAM heatmap of one decoded image as an RGBA PNG on the
    image's own grid, to draw over it (``runner``: a Predictor with a PyTorch model)."""
    model = getattr(runner, "model", None)
    if model is None or not hasattr(model, "named_modules"):
        raise ConfigError("explain", "the model is not a PyTorch network here", "serve the bundle with PyTorch")
    result = explain_sample(runner.bundle, model, sample, method=method, target=target)
    return heatmap_png(result["heat"])


def explain_files(*, bundle: str | Path, images: list[Path], method: str, out: Path, layer: str | None = None,
                  target: str | None = None, progress: bool = True) -> dict[str, int]:
    """Write ``out/<stem>_<method>.png`` and the raw map per image, plus ``out/explanations.csv``.

    An image that fails in any way gets an error row with its one-line reason
    (:func:`~medsight.data.file_errors.file_error`); the others go on.
    """
    from medsight.bundle import load_bundle
    from medsight.inference.predictor import expand_inputs
    from medsight.io import image_stem, read_image
    from medsight.io.nifti import write_nifti
    from medsight.progress import track

    if method not in METHODS:
        raise ConfigError(f"--method {method}", "unknown explanation method", f"choose one of: {', '.join(METHODS)}")
    model_bundle = load_bundle(bundle)
    _check_request(model_bundle, target)
    model = model_bundle.build_model()
    if method != "occlusion":
        check_layer(model, layer)  # a bad --layer fails here, not once per file
    files = expand_inputs(images)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    counts = {"ok": 0, "errors": 0}
    fields = ["path", "label", "target", "method", "overlay", "map", "error"]
    with (out / "explanations.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for path in track(files, description="explaining", enabled=progress):
            row = {"path": str(path), "method": method, "label": "", "target": "", "overlay": "", "map": "",
                   "error": ""}
            try:
                sample = read_image(path)
                result = explain_sample(model_bundle, model, sample, method=method, layer=layer, target=target)
                stem = image_stem(path)
                overlay = out / f"{stem}_{method}.png"
                overlay.write_bytes(overlay_png(sample, result["heat"]))
                if sample.spatial_dims == 3:
                    raw = write_nifti(result["heat"], sample.affine, out / f"{stem}_{method}.nii.gz")
                else:
                    raw = out / f"{stem}_{method}.npy"
                    np.save(raw, result["heat"])
                row.update(label=result["label"], target=result["target"], overlay=str(overlay), map=str(raw))
                counts["ok"] += 1
            except Exception as exc:  # one file's failure, whatever raised it, is its row; the batch goes on
                row["error"] = one_line(file_error(path, exc))
                counts["errors"] += 1
            writer.writerow(row)
            handle.flush()
    return counts


def faithfulness_report(*, bundle: str | Path, data: str, split: str = "val", out: Path,
                        methods: tuple[str, ...] = METHODS, max_cases: int = 100, seed: int = 0,
                        progress: bool = True) -> dict[str, dict[str, float]]:
    """Mean deletion and insertion AUC of each method and of a random order, on a split; ``out/faithfulness.json``.

    Each case explains the class the model predicts (argmax), as in the RISE paper's
    deletion/insertion metrics.
    """
    import torch

    from medsight.bundle import load_bundle
    from medsight.classification.prepare import load_tensors
    from medsight.classification.split import bundle_split
    from medsight.explain.faithfulness import deletion_insertion, random_order_map
    from medsight.progress import track

    model_bundle = load_bundle(bundle)
    model = model_bundle.build_model()
    ds, _, indices = bundle_split(model_bundle, data, split)
    indices = indices[:max_cases]
    tensors, _ = load_tensors(ds, indices, model_bundle.preprocess, progress=False)
    rng = np.random.default_rng(seed)
    curves: dict[str, list[tuple[float, float]]] = {name: [] for name in (*methods, "random")}
    head = model_bundle.model.head
    for i in track(range(len(tensors.ids)), description="faithfulness", enabled=progress):
        x = tensors.images[i : i + 1]
        with torch.no_grad():
            target = int(model(x).argmax(dim=1)[0]) if head == "softmax" else int(model(x)[0, 0] > 0)
        for name in methods:
            heat = saliency(model, x, method=name, target=target, head=head)
            curves[name].append(deletion_insertion(model, x, heat, target=target, head=head))
        curves["random"].append(deletion_insertion(model, x, random_order_map(tuple(x.shape[2:]), rng),
                                                   target=target, head=head))
    report = {name: {"deletion_auc": float(np.mean([d for d, _ in values])),
                     "insertion_auc": float(np.mean([i for _, i in values])), "n": len(values)}
              for name, values in curves.items()}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "faithfulness.json", json.dumps(
        {"split": split, "data": str(data), "bundle": str(bundle), "note": "deletion: lower is better; insertion: "
         "higher is better; random: the same curves with the pixels in random order", "methods": report}, indent=2))
    return report


def _check_request(bundle, target: str | None) -> None:
    if bundle.task != "classification":
        raise ConfigError(
            "explain", f"explanations are for classifiers; this is a {bundle.task} model",
            "a segmenter's probability map (medsight predict) is its own explanation",
        )
    if target is not None and target not in bundle.label_names:
        raise ConfigError(f"--target {target}", f"is not one of the model's classes {bundle.label_names}",
                          "name one of them, or leave --target out to explain the predicted class")
