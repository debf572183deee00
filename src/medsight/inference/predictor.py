"""Predictor: bundle -> preprocess -> network -> probabilities.

The service, the batch CLI and the evaluation all go through the bundle's own
preprocessing, so a served prediction equals the offline one for the same file.
It needs no training code.

Example:
    >>> predictor = Predictor("runs/demo/model")
    >>> predictor.predict_file("case.png")["label"]
    'nodule'
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from medsight.bundle import Bundle, load_bundle
from medsight.data.sample import Sample
from medsight.errors import MedsightError, UnsupportedFileError


class Predictor:
    """Loads a bundle once and predicts class probabilities for samples or files."""

    def __init__(self, bundle: Bundle | str | Path, *, device: str = "cpu") -> None:
        import torch

        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.device = torch.device(device)
        self.model = self.bundle.build_model().to(self.device)

    @property
    def label_names(self) -> list[str]:
        return self.bundle.label_names

    def predict_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Preprocessed ``(N, C, *size)`` arrays -> ``(N, K)`` probabilities."""
        import torch

        from medsight.models.heads import logits_to_probs

        with torch.inference_mode():
            logits = self.model(torch.from_numpy(np.ascontiguousarray(batch, np.float32)).to(self.device))
            return logits_to_probs(logits, self.bundle.model.head).cpu().numpy()

    def predict_sample(self, sample: Sample) -> dict[str, Any]:
        """One decoded image -> label, probabilities and the threshold used."""
        from medsight.transforms import preprocess

        probs = self.predict_arrays(preprocess(sample, self.bundle.preprocess)[None])[0]
        return self._decide(probs)

    def predict_file(self, path: str | Path) -> dict[str, Any]:
        from medsight.io import read_image

        return self.predict_sample(read_image(path))

    def _decide(self, probs: np.ndarray) -> dict[str, Any]:
        threshold = self.bundle.threshold
        index = int(probs[1] >= threshold) if threshold is not None and len(probs) == 2 else int(np.argmax(probs))
        return {
            "label": self.label_names[index],
            "probabilities": {name: float(p) for name, p in zip(self.label_names, probs, strict=True)},
            "threshold": threshold,
        }


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders searched recursively for image files, in a stable order."""
    from medsight.io import is_image_file

    files: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
        elif path.exists():
            files.append(path)
        else:
            raise UnsupportedFileError(path, "no such file or folder", "check the path")
    return files


def iter_predictions(predictor: Predictor, files: list[Path], *, progress: bool) -> Iterator[dict[str, Any]]:
    """One row per file; an unreadable file yields an error row and the rest go on."""
    from medsight.progress import track

    for path in track(files, description="predicting", enabled=progress):
        try:
            yield {"path": str(path), **predictor.predict_file(path), "error": ""}
        except MedsightError as exc:
            yield {"path": str(path), "label": "", "probabilities": {}, "threshold": None, "error": str(exc)}


def predict_to_file(*, bundle: str | Path, inputs: list[Path], out: Path, progress: bool = True) -> dict[str, int]:
    """Predict every input and write a CSV (streamed row by row) or a JSON list."""
    predictor = Predictor(bundle)
    files = expand_inputs(inputs)
    counts = {"ok": 0, "errors": 0}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = iter_predictions(predictor, files, progress=progress)
    if out.suffix.lower() == ".json":
        collected = []
        for row in rows:
            counts["errors" if row["error"] else "ok"] += 1
            collected.append(row)
        out.write_text(json.dumps(collected, indent=2))
        return counts
    fields = ["path", "label", *(f"prob_{n}" for n in predictor.label_names), "threshold", "error"]
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            counts["errors" if row["error"] else "ok"] += 1
            probs = {f"prob_{n}": row["probabilities"].get(n, "") for n in predictor.label_names}
            writer.writerow({"path": row["path"], "label": row["label"], **probs,
                             "threshold": row["threshold"], "error": row["error"]})
            handle.flush()
    return counts
