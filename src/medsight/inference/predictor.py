"""Predictor: bundle -> preprocess -> network -> probabilities.

The service, the batch CLI and the evaluation all go through the bundle's own
preprocessing, so a served prediction equals the offline one for the same file.
It needs no training code.

It is the one prediction path of a classification bundle: ``medsight evaluate``, predict, the
service, the promotion gate, retrain, export parity, robustness and triage all build a
``Predictor`` (from a folder or an in-memory :class:`~medsight.bundle.Bundle`) and call
:meth:`Predictor.predict_tensors` or :meth:`Predictor.predict_sample`. Both run its
:class:`~medsight.inference.classifier.CalibratedClassifier`, which training's calibration and
report use too, so the bundle's temperature is applied in one place.

Two backends run the network:

* ``"torch"``: the bundle's weights in PyTorch (any device);
* ``"onnx"``: the ``model.onnx`` that ``medsight export BUNDLE --format onnx`` wrote into the
  bundle folder, run by ONNX Runtime on the CPU. Its graph holds the final intensity
  normalisation (``minmax``/``zscore``); ``export.json`` says which preprocessing stays
  outside the graph, and the predictor applies exactly that. The predictor reads the graph's
  ``logits`` and applies the bundle's temperature and head itself, as for PyTorch.

Each input is checked against the bundle's domain record (:mod:`medsight.inference.domain`) before its
answer is trusted: every result has ``out_of_domain`` (true or false; None where nothing was checked: the
action is ``off``, or the bundle has no record) and ``domain_reasons``. With the action ``refuse`` an input
outside the domain raises :class:`~medsight.inference.domain.OutOfDomainError` (no class, the reasons instead).

``backend="auto"`` (the default) takes ``"onnx"`` when the predictor is given a bundle folder
whose ``export.json`` records an ONNX export of the very weights in that folder (SHA-256 of
``weights.safetensors`` and of ``model.onnx`` both match), ONNX Runtime is installed and the
device is the CPU; otherwise ``"torch"``. An export made from other weights is never used:
``"auto"`` warns and falls back to PyTorch, ``"onnx"`` raises. The two backends agree within
1e-4 on every probability (the export checks this on real images).

Example:
    >>> predictor = Predictor("runs/demo/model")
    >>> predictor.predict_file("case.png")["label"]
    'nodule'
    >>> Predictor("runs/demo/model", backend="torch").backend
    'torch'
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from medsight.atomic_write import atomic_write_text
from medsight.bundle import Bundle, load_bundle
from medsight.config import PreprocessConfig
from medsight.data.file_errors import file_error, one_line
from medsight.errors import ConfigError, InvalidImageError, UnsupportedFileError
from medsight.inference.domain import CHECK_OFF, NO_RECORD, OutOfDomainError, domain_check, unchecked
from medsight.inference.domain_features import probs_and_features
from medsight.inference.onnx_backend import BACKENDS, OnnxLogits, onnx_export_record, onnx_session
from medsight.sample import Sample

#: The export record that ``medsight export`` writes beside ``bundle.json``.


class Predictor:
    """Loads a bundle once and predicts class probabilities for samples or files.

    Args:
        bundle: a bundle folder, or a loaded :class:`~medsight.bundle.Bundle` (which has no
            folder, so it always runs on PyTorch).
        device: where the PyTorch backend runs (``"cpu"``, ``"cuda"``...).
        backend: ``"auto"``, ``"torch"`` or ``"onnx"`` (see the module docstring).
        out_of_domain: ``flag``, ``refuse`` or ``off`` for inputs outside the training domain; None takes the
            bundle's (its training config's ``predict.out_of_domain``).

    Raises:
        ConfigError: an unknown backend or out_of_domain action, or ``"onnx"`` on a device other than the CPU.
        BundleError: ``"onnx"`` on a bundle without a current ONNX export.
    """

    def __init__(self, bundle: Bundle | str | Path, *, device: str = "cpu", backend: str = "auto",
                 out_of_domain: str | None = None) -> None:
        import torch

        from medsight.inference.classifier import CalibratedClassifier

        if backend not in BACKENDS:
            raise ConfigError(f"backend={backend}", "unknown backend", f"use one of {', '.join(BACKENDS)}")
        folder = None if isinstance(bundle, Bundle) else Path(bundle)
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.device = torch.device(device)
        record = self._onnx_record(folder, backend)
        self.backend = "onnx" if record is not None else "torch"
        self._input_preprocess = self.bundle.preprocess
        if record is not None:
            network = OnnxLogits(onnx_session(folder / record["file"], threads=torch.get_num_threads()))
            self._input_preprocess = PreprocessConfig.model_validate(record["input_preprocess"])
        else:
            network = self.model  # build (and move) the network now, so a bad bundle fails here
        #: the network (PyTorch, or the ONNX graph's logits) with the bundle's head and temperature
        self.classifier = CalibratedClassifier(network, head=self.bundle.model.head,
                                               temperature=self.bundle.temperature, device=self.device)
        #: the check of each input against the bundle's domain record; None: not checked (no record, or off)
        self.domain = domain_check(self.bundle.domain, out_of_domain)
        #: why inputs are not checked (None when they are)
        self.domain_note = None if self.domain is not None else NO_RECORD if self.bundle.domain is None else CHECK_OFF

    @cached_property
    def model(self):
        """The PyTorch network with the bundle's weights, in eval mode on ``device``.

        Built at start-up for the torch backend and on first use for the ONNX backend
        (Grad-CAM and other tools that need the PyTorch module still get it).
        """
        return self.bundle.build_model().to(self.device)

    @property
    def label_names(self) -> list[str]:
        return self.bundle.label_names

    def predict_tensors(self, images) -> np.ndarray:
        """Preprocessed ``(N, C, *size)`` float tensors -> ``(N, K)`` calibrated probabilities.

        Both backends take the network's logits, divide them by the bundle's temperature
        (calibration) and apply the head (:class:`~medsight.inference.classifier.CalibratedClassifier`),
        so the probabilities are the calibrated ones the evaluation reports. (The ONNX graph's
        ``probabilities`` are calibrated too, for other runtimes; the predictor reads the raw ``logits``,
        so exports made before the graph applied the temperature still give calibrated probabilities.)
        The ONNX graph normalises its input itself; minmax and z-score are idempotent, so the
        fully preprocessed images this method takes give the same probabilities there too.
        """
        return self.classifier.predict(images)

    def predict_arrays(self, batch: np.ndarray) -> np.ndarray:
        """:meth:`predict_tensors` of preprocessed ``(N, C, *size)`` NumPy arrays."""
        import torch

        return self.predict_tensors(torch.from_numpy(np.ascontiguousarray(batch, np.float32)))

    def predict_sample(self, sample: Sample) -> dict[str, Any]:
        """One decoded image -> label, probabilities, the threshold used, ``out_of_domain`` and ``domain_reasons``.

        Raises:
            InvalidImageError: a 3D volume for a 2D model, or the reverse.
            OutOfDomainError: the input is outside the training domain and the action is ``refuse``.
        """
        from medsight.transforms import preprocess

        check_spatial_dims(sample, len(self._input_preprocess.size))
        batch = preprocess(sample, self._input_preprocess)[None]
        if self.domain is None:
            return {**self._decide(self.predict_arrays(batch)[0]), **unchecked()}
        reasons = self.domain.input_reasons(sample)
        if self.domain.uses_features:  # read in the same forward pass on PyTorch; a second pass beside ONNX
            probs, features = probs_and_features(self.predict_arrays, self.model, batch,
                                                 same_pass=self.backend == "torch", device=self.device,
                                                 member=self.domain.record.features.member)
            reasons += self.domain.feature_reasons(features)
        else:
            probs = self.predict_arrays(batch)
        return {**self._decide(probs[0]), **self.domain.verdict(str(sample.meta.get("path", "image")), reasons)}

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

    def _onnx_record(self, folder: Path | None, backend: str) -> dict[str, Any] | None:
        """The ONNX export to run, or None for PyTorch (see the module docstring)."""
        return onnx_export_record(folder, backend, device_type=self.device.type)


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


def check_spatial_dims(sample: Sample, model_dims: int, *, volumes: str = "a NIfTI or NRRD file, or a multi-frame "
                       "DICOM") -> None:
    """Refuse, at prediction time, an image whose number of spatial axes is not the model's.

    Args:
        sample: the decoded image (its ``meta["path"]`` names it in the error).
        model_dims: 2 for a model of 2D images, 3 for one of volumes.
        volumes: what a volume may be given as, for the message to a 3D model's user.

    Raises:
        InvalidImageError: a 3D volume for a 2D model, or a 2D image for a 3D model.
    """
    if sample.spatial_dims == model_dims:
        return
    where = sample.meta.get("path", "image")
    shape = "x".join(str(n) for n in sample.spatial_shape)
    if model_dims == 2:
        raise InvalidImageError(
            where, f"this model takes 2D images, and this is a {sample.spatial_dims}D volume ({shape})",
            "pass 2D slices instead: medsight predicts no slice or projection of a volume, so export the slices "
            "you want as PNG or single-frame DICOM files and predict those",
        )
    raise InvalidImageError(
        where, f"this model takes 3D volumes, and this is a {sample.spatial_dims}D image ({shape})",
        f"pass whole volumes ({volumes}), not single slices",
    )


def decision_rule(label_names: list[str], threshold: float | None) -> str:
    """How a row's label follows from its probabilities, with the threshold rounded to 4 digits.

    Example:
        >>> decision_rule(["no", "yes"], 0.31996)
        'label yes when prob_yes >= 0.3200 (the threshold column), else no'
    """
    if threshold is None or len(label_names) != 2:
        return "label: the most probable class (the threshold column is empty)"
    negative, positive = label_names
    return f"label {positive} when prob_{positive} >= {threshold:.4f} (the threshold column), else {negative}"


def error_row(path: Path, exc: Exception) -> dict[str, Any]:
    """The row of a file that failed: no label or probabilities, the one-line reason in ``error``; a refused
    out-of-domain input also has ``out_of_domain`` true and its ``domain_reasons``."""
    refused = isinstance(exc, OutOfDomainError)
    return {"path": str(path), "label": "", "probabilities": {}, "threshold": None,
            "out_of_domain": True if refused else None, "domain_reasons": exc.reasons if refused else [],
            "error": one_line(file_error(path, exc))}


def iter_predictions(predictor: Predictor, files: list[Path], *, progress: bool) -> Iterator[dict[str, Any]]:
    """One row per file; a file that fails in any way yields an error row and the rest go on.

    Any exception from one file (a reader's :class:`~medsight.errors.MedsightError`, or, as a
    last safety net, a decoding library's own) becomes that file's error row
    (:func:`~medsight.data.file_errors.file_error`); ``KeyboardInterrupt`` still stops the run.
    """
    from medsight.progress import track

    for path in track(files, description="predicting", enabled=progress):
        try:
            row = {"path": str(path), **predictor.predict_file(path), "error": ""}
        except Exception as exc:  # one file's failure, whatever raised it, is its row; the batch goes on
            row = error_row(path, exc)
        yield row


def predict_to_file(
    *, bundle: str | Path, inputs: list[Path], out: Path, progress: bool = True, backend: str = "auto",
    resume: bool = False, out_of_domain: str | None = None,
) -> dict[str, int]:
    """Predict every input and write a CSV (streamed row by row) or a JSON list.

    With ``resume`` (CSV only), files that already have a row in ``out`` are skipped and the
    new rows are appended; ``counts["skipped"]`` says how many. ``out_of_domain`` overrides the bundle's action
    (a refused input is an error row).

    Raises:
        ConfigError: ``resume`` with a JSON output, or a CSV another model wrote.
    """
    from medsight.inference.results_csv import ResultsCsv, csv_row, prediction_fields

    predictor = Predictor(bundle, backend=backend, out_of_domain=out_of_domain)
    files = expand_inputs(inputs)
    counts = {"ok": 0, "errors": 0, "skipped": 0}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".json":
        if resume:
            raise ConfigError(f"--out {out}", "--resume appends to a CSV; a JSON list is written whole",
                              "use a .csv output to resume")
        collected = []
        for row in iter_predictions(predictor, files, progress=progress):
            counts["errors" if row["error"] else "ok"] += 1
            collected.append(row)
        atomic_write_text(out, json.dumps(collected, indent=2))
        return counts
    fields = prediction_fields(predictor.label_names, domain=predictor.bundle.domain is not None)
    with ResultsCsv(out, fields, resume=resume) as results:
        todo = [path for path in files if str(path) not in results.done]
        counts["skipped"] = len(files) - len(todo)
        for row in iter_predictions(predictor, todo, progress=progress):
            counts["errors" if row["error"] else "ok"] += 1
            results.write(csv_row(row, fields))
    return counts
