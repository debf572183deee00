"""The model bundle: everything needed to use a trained model anywhere.

A bundle is a folder::

    model/
      weights.safetensors   the state dict (never a pickle)
      bundle.json           task, model name + kwargs, head, preprocessing, label names,
                            the operating threshold, the calibration temperature
                            (absent or null in older bundles: 1.0), validation metrics
                            and provenance;
                            segmentation bundles add ``segmentation``: the plan's intensity
                            normalisation and the sliding-window / postprocessing settings;
                            detection bundles add ``detection``: the anchors, the box
                            post-processing and the shipped score threshold;
                            classification bundles may add ``domain``: what the model was trained on
      domain.safetensors    the domain record's training feature vectors (only with ``domain``)

Evaluate, predict, explain, export and serve take a bundle and nothing else, so the
preprocessing used in training is replayed exactly.

What code reads back is typed (:mod:`medsight.bundle_fields`): ``segmentation``, ``detection``, and the data
settings, split and threshold choice that the manifest keeps under their old ``provenance`` keys.
``provenance`` itself is a record (versions, time stamp, training figures) that is shown, never
read for behaviour. :func:`build_bundle` is the one place a Bundle is assembled, for a training
run and for :func:`load_bundle` alike.

Example:
    >>> bundle = load_bundle("runs/demo/model")
    >>> model = bundle.build_model()
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medsight import __version__
from medsight.atomic_write import atomic_write_bytes, write_error
from medsight.bundle_fields import (
    DataSettings,
    DetectionSettings,
    DomainRecord,
    SegmentationSettings,
    SplitRecord,
    ThresholdChoice,
    field_error,
    record_keys,
    recorded_fields,
)
from medsight.config import ModelConfig, PreprocessConfig
from medsight.errors import BundleError, OutputWriteError
from medsight.hashing import files_sha256

FORMAT_VERSION = 1
WEIGHTS = "weights.safetensors"
MANIFEST = "bundle.json"
DOMAIN_FEATURES = "domain.safetensors"


@dataclass
class Bundle:
    """A trained model with its preprocessing, its typed settings and its provenance record.

    ``segmentation`` and ``detection`` also take the manifest's dict (validated into :class:`SegmentationSettings`,
    :class:`DetectionSettings`).
    ``data``, ``split`` and ``threshold_choice`` are written under their provenance keys, over
    whatever the record holds there.
    """

    task: str
    model: ModelConfig
    preprocess: PreprocessConfig
    label_names: list[str]
    threshold: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    state_dict: dict[str, Any] | None = None
    segmentation: SegmentationSettings | None = None
    temperature: float | None = None
    data: DataSettings = field(default_factory=DataSettings)
    split: SplitRecord = field(default_factory=SplitRecord)
    threshold_choice: ThresholdChoice = field(default_factory=ThresholdChoice)
    domain: DomainRecord | None = None
    detection: DetectionSettings | None = None

    def __post_init__(self) -> None:
        if isinstance(self.segmentation, dict):
            self.segmentation = SegmentationSettings.model_validate(self.segmentation)
        if isinstance(self.detection, dict):
            self.detection = DetectionSettings.model_validate(self.detection)

    @property
    def num_outputs(self) -> int:
        if self.task == "classification" and self.model.head == "sigmoid":
            return 1
        return len(self.label_names)

    @property
    def spatial_dims(self) -> int:
        return len(self.preprocess.size)

    @property
    def version(self) -> str:
        """The bundle's training time stamp, as DICOM results name the algorithm's version."""
        return str(self.provenance.get("created") or "unversioned")

    def build_model(self):
        """The network with the bundle's weights loaded, in eval mode."""
        from medsight.models import create_model

        net = create_model(
            self.model.name,
            in_channels=self.preprocess.channels,
            num_outputs=self.num_outputs,
            spatial_dims=self.spatial_dims,
            **self.model.kwargs,
        )
        if self.state_dict is not None:
            net.load_state_dict(self.state_dict)
        return net.eval()

    def save(self, folder: str | Path) -> Path:
        """Write the bundle atomically: a crash or a full disk never leaves half a bundle behind.

        The files are written into a staging folder next to ``folder``, which then replaces it;
        if a write fails the staging folder is removed and an earlier bundle stays as it was.

        Raises:
            BundleError: there are no weights to save.
            OutputWriteError: the disk is full or the folder is not writable.
        """
        from safetensors.torch import save

        folder = Path(folder)
        if self.state_dict is None:
            raise BundleError(folder, "no weights to save", "train the model first")
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict.items()}
        files = [(WEIGHTS, save(tensors)), (MANIFEST, json.dumps(self.manifest(), indent=2).encode())]
        if self.domain is not None and self.domain.reference is not None:
            files.append((DOMAIN_FEATURES, _domain_bytes(self.domain)))
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        except OSError as exc:
            raise write_error(folder, exc) from exc
        try:
            for name, data in files:
                try:
                    atomic_write_bytes(staging / name, data)
                except OutputWriteError as exc:  # name the file the user asked for, not the staging copy
                    raise OutputWriteError(folder / name, exc.problem, exc.fix) from exc
        except BaseException:
            _remove_tree(staging)
            raise
        if folder.exists():
            old = folder.with_name(f".{folder.name}-old-{os.getpid()}")
            folder.rename(old)
            staging.rename(folder)
            _remove_tree(old)
        else:
            staging.rename(folder)
        return folder

    def manifest(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "task": self.task,
            "model": self.model.model_dump(mode="json"),
            "preprocess": self.preprocess.model_dump(mode="json"),
            "label_names": self.label_names,
            "threshold": self.threshold,
            "temperature": self.temperature,
            "metrics": self.metrics,
            "provenance": {**self.provenance, **record_keys(self.data, self.split, self.threshold_choice)},
            **({"segmentation": self.segmentation.model_dump(mode="json")} if self.segmentation is not None else {}),
            **({"domain": self.domain.model_dump(mode="json")} if self.domain is not None else {}),
            **({"detection": self.detection.model_dump(mode="json")} if self.detection is not None else {}),
        }


def load_bundle(folder: str | Path, *, weights: bool = True) -> Bundle:
    """Read a bundle folder: the manifest validated into typed fields, then the weights.

    Raises:
        BundleError: the folder, its manifest or its weights are missing or unreadable, or a manifest
            value has the wrong type (the message names bundle.json and the field).
    """
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(folder, f"no {MANIFEST} here", "pass the model folder a training run wrote (RUN/model)")
    try:
        raw = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(manifest_path, f"not valid JSON ({exc})", "re-export the bundle") from exc
    if raw.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            manifest_path,
            f"bundle format {raw.get('format_version')} is not {FORMAT_VERSION}",
            f"use the medsight version that wrote it, or retrain with medsight {__version__}",
        )
    temperature = _temperature(raw.get("temperature"), manifest_path)
    try:
        manifest = _Manifest.model_validate(raw)
    except ValidationError as exc:
        raise field_error(manifest_path, exc) from exc
    state = None
    if weights:
        weights_path = folder / WEIGHTS
        if not weights_path.is_file():
            raise BundleError(folder, f"{WEIGHTS} is missing", "copy the whole model folder")
        from safetensors.torch import load_file

        try:
            state = load_file(str(weights_path))
        except Exception as exc:  # safetensors raises its own error types
            raise BundleError(weights_path, f"unreadable weights ({exc})", "copy the bundle again") from exc
    fields = {name: getattr(manifest, name) for name in _Manifest.model_fields}
    if weights and manifest.domain is not None and manifest.domain.features is not None:
        fields["domain"] = manifest.domain.model_copy(update={"reference": _domain_reference(folder)})
    return build_bundle(**fields, state_dict=state, temperature=temperature, source=manifest_path)


def build_bundle(
    *,
    task: str,
    model: ModelConfig,
    preprocess: PreprocessConfig,
    label_names: list[str],
    provenance: dict[str, Any],
    state_dict: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    threshold: float | None = None,
    temperature: float | None = None,
    segmentation: SegmentationSettings | None = None,
    data: DataSettings | None = None,
    split: SplitRecord | None = None,
    threshold_choice: ThresholdChoice | None = None,
    domain: DomainRecord | None = None,
    detection: DetectionSettings | None = None,
    source: str | Path | None = None,
) -> Bundle:
    """The one way a Bundle is assembled: by a training run (``provenance`` from :func:`provenance`) and
    by :func:`load_bundle` (``provenance`` as the manifest recorded it).

    ``data``, ``split`` and ``threshold_choice`` not given are read from the provenance record's keys,
    where every bundle written so far keeps them.

    Raises:
        BundleError: a recorded value has the wrong type (the message names ``source`` and the key).
    """
    recorded = recorded_fields(provenance, source=source)
    return Bundle(
        task=task, model=model, preprocess=preprocess, label_names=list(label_names), threshold=threshold,
        metrics=dict(metrics or {}), provenance=dict(provenance), state_dict=state_dict,
        segmentation=segmentation, temperature=temperature,
        data=recorded["data"] if data is None else data,
        split=recorded["split"] if split is None else split,
        threshold_choice=recorded["threshold_choice"] if threshold_choice is None else threshold_choice,
        domain=domain, detection=detection,
    )


class _Manifest(BaseModel):
    """``bundle.json`` as :func:`load_bundle` reads it (``format_version`` and ``temperature`` are checked apart)."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    task: str
    model: ModelConfig
    preprocess: PreprocessConfig
    label_names: list[str]
    threshold: float | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    provenance: dict[str, Any] = Field(default_factory=dict)
    segmentation: SegmentationSettings | None = None
    domain: DomainRecord | None = None
    detection: DetectionSettings | None = None

    @field_validator("metrics", "provenance", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value


def bundle_hash(folder: str | Path) -> str:
    """``sha256:<16 hex>`` over bundle.json, the weights and (where there is one) the domain's feature file: the
    model version the service, registry and triage use."""
    folder = Path(folder)
    extra = [folder / DOMAIN_FEATURES] if (folder / DOMAIN_FEATURES).is_file() else []
    return f"sha256:{files_sha256(folder / MANIFEST, folder / WEIGHTS, *extra)[:16]}"


def provenance(**extra: Any) -> dict[str, Any]:
    """Versions and time stamp recorded with every bundle."""
    import torch

    return {
        "medsight": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def _temperature(value: Any, manifest_path: Path) -> float | None:
    """The stored temperature: None (older bundles, or no calibration) or a positive number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise BundleError(manifest_path, f"temperature {value!r} is not a positive number",
                          "remove the temperature key (no calibration) or retrain the model")
    return float(value)


def _domain_bytes(domain: DomainRecord) -> bytes:
    """The domain record's feature vectors as safetensors bytes (``{"features": (n, dim)}``, float16)."""
    import numpy as np
    from safetensors.numpy import save

    return save({"features": np.ascontiguousarray(domain.reference, dtype=np.float16)})


def _domain_reference(folder: Path):
    """The training feature vectors of ``domain.safetensors`` as float32 ``(n, dim)``.

    Raises:
        BundleError: bundle.json records a feature reference and the file is missing or unreadable.
    """
    import numpy as np
    from safetensors.numpy import load_file

    path = folder / DOMAIN_FEATURES
    if not path.is_file():
        raise BundleError(folder, f"bundle.json records a domain feature reference and {DOMAIN_FEATURES} is missing",
                          "copy the whole model folder")
    try:
        return load_file(str(path))["features"].astype(np.float32)
    except Exception as exc:  # safetensors raises its own error types
        raise BundleError(path, f"unreadable domain features ({exc})", "copy the bundle again") from exc


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


__all__ = ["Bundle", "build_bundle", "load_bundle", "provenance"]
