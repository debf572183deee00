"""The typed settings a bundle carries besides its network: what code reads back from ``bundle.json``.

- :class:`SegmentationSettings`: the manifest's ``segmentation`` (the plan's normalisation, the
  sliding-window, TTA and postprocessing settings, the per-class thresholds);
- :class:`DetectionSettings`: the manifest's ``detection`` (anchors, box post-processing, the shipped score
  threshold and how it was chosen);
- :class:`DataSettings`: where the training data was and the data settings its split is rebuilt from;
- :class:`SplitRecord`: the case ids of each split a segmentation run made;
- :class:`ThresholdChoice`: how the operating threshold was chosen, with which evaluation settings,
  and how the temperature was (or was not) fitted;
- :class:`DomainRecord`: the manifest's ``domain``, what a classifier was trained on (modalities, body parts,
  channels, sizes, intensities, the feature-space reference), which prediction checks each input against.

DataSettings, SplitRecord and ThresholdChoice live in the manifest under the ``provenance`` keys medsight has
always written (``data``, ``data_hash``, ``data_config``, ``split``, ``split_note``, ``threshold_note``,
``eval_config``, ``calibration``), so bundles written before these settings were typed load into
them, and bundles written now load in older medsight. :func:`recorded_fields` reads them out of a
provenance record; :func:`record_keys` writes them back. Code reads the typed fields, never the record.

Example:
    >>> fields = recorded_fields({"data": "data/chest", "threshold_note": "Youden on validation (n=78)"})
    >>> fields["data"].path, fields["threshold_choice"].note
    ('data/chest', 'Youden on validation (n=78)')
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator

from medsight.config import DataConfig, EvalConfig
from medsight.errors import BundleError


class InferenceProfile(BaseModel):
    """A segmenter's inference options, measured (``segmentation.profiles`` in the manifest): the first ``views``
    test-time views (:func:`~medsight.inference.segment.tta_views` order) at window ``overlap``, with the pooled
    ``auc`` and ``f1`` and the ``seconds`` per case they gave on the cases measured."""

    model_config = ConfigDict(extra="forbid")

    views: int = Field(ge=1)
    overlap: float = Field(ge=0.0, lt=1.0)
    auc: float | None = None
    f1: float | None = None
    seconds: float | None = None


class SegmentationSettings(BaseModel):
    """How a segmentation bundle turns an image into labels (the manifest's ``segmentation``).

    ``normalization`` is the plan's intensity normalisation of the whole image (``{"scheme": ...}``);
    ``target_spacing`` the grid the network predicts on (None: the image's own); ``thresholds`` the
    probability threshold per class (as the manifest writes them: ``{"1": 0.72}``); ``logit_median``
    the level each image's foreground logits are centred to (``segment.centre_logits``; None: off);
    ``profiles`` the measured ``fast`` and ``accurate`` inference options, ``default_profile`` the one used
    unless another is asked for, and ``profile_note`` how they were measured (none: an older bundle, which
    predicts with its own options).
    """

    model_config = ConfigDict(extra="forbid")

    normalization: dict[str, Any]
    overlap: float = 0.5
    mirror_tta: bool = False
    transpose_tta: bool = False
    largest_component: bool = False
    target_spacing: list[float] | None = None
    thresholds: dict[str, float] = Field(default_factory=dict)
    logit_median: float | None = None
    profiles: dict[str, InferenceProfile] = Field(default_factory=dict)
    default_profile: str | None = None
    profile_note: str = ""

    @field_validator("thresholds", mode="before")
    @classmethod
    def _class_keys_as_text(cls, value: Any) -> Any:
        """Class indices as the manifest's JSON keys (``{1: 0.7}`` -> ``{"1": 0.7}``); null: none."""
        if value is None:
            return {}
        return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value

    def class_thresholds(self) -> dict[int, float]:
        """``thresholds`` keyed by class index, as :func:`~medsight.inference.postprocess.probs_to_labels` wants."""
        return {int(k): float(v) for k, v in self.thresholds.items()}

    def with_thresholds(self, thresholds: dict[int, float], logit_median: float | None) -> SegmentationSettings:
        """These settings with other thresholds and centring level (a fold ensemble's, chosen out of fold)."""
        return SegmentationSettings.model_validate(
            {**self.model_dump(), "thresholds": thresholds, "logit_median": logit_median})

    def __getitem__(self, key: str) -> Any:
        """A setting by its manifest key (``settings["thresholds"]``), as it was read while the settings were a dict."""
        return getattr(self, key)


class DetectionSettings(BaseModel):
    """How a detection bundle turns an image into boxes (the manifest's ``detection``).

    ``anchor_sizes`` has one ``[extent_axis0, ..]`` per feature level in input pixels and ``aspect_ratios`` the
    2D anchors' height/width ratios (as :func:`~medsight.models.detectors.anchor_shapes` makes them); boxes
    scored below ``score_floor`` are dropped before non-maximum suppression at ``nms_iou``, and at most
    ``max_detections`` are kept per image. ``score_threshold`` is the shipped operating point: boxes scored at
    or above it are the findings; ``threshold_note`` says how it was chosen.
    """

    model_config = ConfigDict(extra="forbid")

    anchor_sizes: list[list[float]]
    aspect_ratios: list[float] = Field(default_factory=lambda: [0.5, 1.0, 2.0])
    score_floor: float = Field(0.05, ge=0, lt=1)
    nms_iou: float = Field(0.5, gt=0, le=1)
    max_detections: int = Field(100, ge=1)
    backbone: str = "resnet18"
    score_threshold: float = Field(0.5, ge=0, le=1)
    threshold_note: str = "0.5, the default: not chosen on validation"

    @field_validator("anchor_sizes")
    @classmethod
    def _levels(cls, value: list[list[float]]) -> list[list[float]]:
        if not value or len({len(size) for size in value}) != 1 or len(value[0]) not in (2, 3):
            raise ValueError("anchor_sizes must list one [extent, extent(, extent)] per feature level, all 2D or "
                             "all 3D")
        return value


class _Recorded(BaseModel):
    """A typed field kept under provenance keys: validated from the record by those keys, extra keys ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    def record(self) -> dict[str, Any]:
        """The provenance keys this field writes; a field that is None writes no key (as before)."""
        return {k: v for k, v in self.model_dump(mode="json", by_alias=True).items() if v is not None}


class DataSettings(_Recorded):
    """The training data: its folder (``data``), its hash (``data_hash``, the registry's record of
    what was trained on) and the data settings (``data_config``: fractions, folds, seed-free split
    rules) that rebuild the run's split on that data."""

    path: str | None = Field(None, alias="data")
    hash: str | None = Field(None, alias="data_hash")
    config: DataConfig | None = Field(None, alias="data_config")

    @classmethod
    def of(cls, data: DataConfig, *, hash: str | None = None) -> DataSettings:
        """A run's data settings from its config (the folder kept apart, as ``path``)."""
        return cls(path=str(data.path), hash=hash, config=data)

    @field_serializer("config")
    def _config_without_folder(self, config: DataConfig | None) -> dict[str, Any] | None:
        """The manifest stores the split rules only: the folder is ``data``, the classes are the label names."""
        return None if config is None else config.model_dump(mode="json", exclude={"path", "class_names"})

    def split_config(self, data: str | Path) -> DataConfig:
        """The data settings to rebuild the run's split on the data at ``data`` (defaults where none are stored)."""
        stored = self._config_without_folder(self.config) or {}
        return DataConfig.model_validate({**stored, "path": str(data)})


class SplitRecord(_Recorded):
    """The case ids of each split a segmentation run made (``split``: ``{"train": [...], "val": [...]}``),
    and why a split is empty where it is (``split_note``: a fold ensemble has no validation cases)."""

    cases: dict[str, list[str]] | None = Field(None, alias="split")
    note: str | None = Field(None, alias="split_note")

    def of(self, split: str) -> list[str]:
        """The case ids of ``split``; none where the run made no such split."""
        return list((self.cases or {}).get(split, []))


class ThresholdChoice(_Recorded):
    """How the operating point was chosen: the note that says how (``threshold_note``), the evaluation
    settings it was chosen with and evaluation replays (``eval_config``), and whether a temperature was
    fitted and why (``calibration``: the :class:`~medsight.classification.calibration.TemperatureChoice`)."""

    note: str | None = Field(None, alias="threshold_note")
    evaluation: EvalConfig | None = Field(None, alias="eval_config")
    calibration: dict[str, Any] | None = None

    def note_or(self, default: str) -> str:
        """The note, or ``default`` for a bundle that records none."""
        return default if self.note is None else self.note


#: the typed fields a provenance record holds, by the Bundle attribute they fill
RECORDED_FIELDS: dict[str, type[_Recorded]] = {
    "data": DataSettings, "split": SplitRecord, "threshold_choice": ThresholdChoice,
}


def recorded_fields(record: dict[str, Any], *, source: str | Path | None = None) -> dict[str, _Recorded]:
    """The typed fields a provenance record holds (keys it lacks take their defaults).

    Raises:
        BundleError: a value has the wrong type; the message names ``source`` and the provenance key.
    """
    fields = {}
    for name, model in RECORDED_FIELDS.items():
        keys = [info.alias or key for key, info in model.model_fields.items()]
        try:
            fields[name] = model.model_validate({key: record[key] for key in keys if key in record})
        except ValidationError as exc:
            raise field_error(source, exc, prefix="provenance") from exc
    return fields


def record_keys(*fields: _Recorded) -> dict[str, Any]:
    """The provenance keys the typed fields write into the manifest."""
    return {key: value for field in fields for key, value in field.record().items()}


def field_error(source: str | Path | None, exc: ValidationError, *, prefix: str = "") -> BundleError:
    """The first problem pydantic found, as a :class:`BundleError` naming the file and the field."""
    problem = exc.errors()[0]
    where = ".".join(str(part) for part in (prefix, *problem["loc"]) if part != "")
    got = repr(problem.get("input"))
    got = got if len(got) <= 60 else f"{got[:57]}..."
    return BundleError(source, f"field {where}: {problem['msg']} (got {got})",
                       "correct that value in bundle.json, or retrain the model")




class IntensityRange(BaseModel):
    """The training images' intensities in the files' own units (HU for CT, stored values otherwise), from the
    fingerprint: the 0.5 and 99.5 percentiles (``low``, ``high``) and the extremes."""

    model_config = ConfigDict(extra="forbid")

    unit: str = "stored value"
    low: float
    high: float
    min: float | None = None
    max: float | None = None


class FeatureReference(BaseModel):
    """The training set in the network's feature space: ``n_reference`` penultimate feature vectors (the input of
    the last ``nn.Linear``; a fold ensemble's members concatenated) kept in ``domain.safetensors``; an input's
    distance is the mean cosine distance to its ``k`` nearest; above ``threshold`` (the ``quantile`` of the
    distances of ``n_threshold_cases`` calibration cases the model never trained on) it is out of domain.
    ``false_alarm_rate`` is the share of ``n_holdout_cases`` other calibration cases above that threshold.
    ``member``: the features are those of one fold-ensemble member alone, calibrated on its own fold's validation
    cases (the only cases a member of a fold ensemble never trained on)."""

    model_config = ConfigDict(extra="forbid")

    n_reference: int
    dim: int
    k: int
    quantile: float
    threshold: float
    n_threshold_cases: int
    n_holdout_cases: int
    false_alarm_rate: float | None = None
    seed: int = 0
    member: int | None = None  # a fold ensemble's member whose features these are (None: the whole network)


class DomainRecord(BaseModel):
    """What a classifier was trained on, so prediction can say when an input lies outside it (``domain`` in
    ``bundle.json``; the feature vectors, ``reference``, in ``domain.safetensors``, never in the JSON).

    Empty lists and ``None`` mean "not known" and are not checked. ``action`` is the training config's
    ``predict.out_of_domain`` (flag, refuse, off); ``notes`` say what could not be recorded.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    action: Literal["flag", "refuse", "off"] = "flag"
    modalities: list[str] = Field(default_factory=list)
    body_parts: list[str] = Field(default_factory=list)
    channels: list[int] = Field(default_factory=list)
    size_min: list[int] | None = None
    size_max: list[int] | None = None
    intensity: IntensityRange | None = None
    features: FeatureReference | None = None
    notes: list[str] = Field(default_factory=list)
    reference: Any = Field(None, exclude=True)


__all__ = ["DataSettings", "DetectionSettings", "DomainRecord", "FeatureReference", "InferenceProfile",
           "IntensityRange", "SegmentationSettings", "SplitRecord", "ThresholdChoice", "field_error", "record_keys",
           "recorded_fields"]
