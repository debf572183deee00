"""Typed configuration, validated once at the edge.

A run is described by a YAML file (or a packaged recipe) that maps onto
:class:`RunConfig`. CLI flags override keys with dotted paths
(``train.lr=0.01``). Inside the code the typed objects are passed, never dicts.

Example:
    >>> cfg = load_config(recipe="medmnist", overrides={"train.epochs": 2})
    >>> cfg.train.epochs
    2
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medsight.atomic_write import atomic_write_text
from medsight.errors import ConfigError

Task = Literal["classification", "segmentation", "detection"]


class Strict(BaseModel):
    """Unknown keys are an error, so a typo in YAML never passes silently."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class DataConfig(Strict):
    """Where the data is and how to split it."""

    path: str | None = None
    class_names: list[str] | None = Field(
        None, description="classes in label order (default: sorted); for two classes the second is the positive one"
    )
    val_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    folds: int = Field(1, ge=1)
    fold: int | None = Field(None, ge=0, description="with folds > 1: train this fold alone (0 .. folds - 1); "
                             "unset: train every fold")
    on_bad_file: Literal["error", "skip"] = "error"
    series_uid: str | None = None
    cache: Literal["none", "memory", "disk"] = Field(
        "none", description="keep preprocessed samples (keyed by file and preprocessing hash) so later epochs "
        "and runs skip decoding"
    )
    cache_dir: str | None = Field(None, description="disk cache folder; default ~/.cache/medsight/samples")
    modality: str | None = Field(None, description="the images' modality (CT, MR, XR, US, photo, ...) for the plan "
                                 "and the domain check; default: the DICOM Modality tag, else a stated guess")


class PreprocessConfig(Strict):
    """Deterministic preprocessing; saved in the bundle and replayed at inference.

    ``size`` is the spatial size the network sees (2 values for 2D, 3 for 3D).
    ``window`` is a named CT preset (``lung``, ``mediastinum``, ``bone``, ``brain``,
    ``abdomen``, ``liver``, ``soft_tissue``) or ``[center, width]``, applied to the raw
    (rescaled, e.g. HU) values when ``normalize`` is ``ct_window``.
    """

    size: list[int] = Field(default_factory=lambda: [64, 64])
    channels: int = Field(1, ge=1, le=4)
    normalize: Literal["minmax", "zscore", "ct_window", "dataset", "none"] = "minmax"
    window: str | list[float] | None = None
    intensity_clip: list[float] | None = Field(None, description="normalize=dataset: clip the file's own values "
                                               "(HU for CT) to [low, high] (the plan: the data set's foreground "
                                               "0.5 and 99.5 percentiles) before the global z-score")
    intensity_mean: float = Field(0.0, description="normalize=dataset: the data set's mean after clipping")
    intensity_std: float = Field(1.0, gt=0, description="normalize=dataset: the data set's standard deviation "
                                 "after clipping")
    keep_aspect: bool = Field(False, description="pad the image to the aspect ratio of size (with its smallest "
                              "value, centred) before resizing, instead of squashing it")
    clahe: bool = False
    clahe_clip: float = Field(0.01, gt=0.0, le=1.0, description="CLAHE's clip limit (scikit-image's, a fraction "
                              "of each tile's pixels per histogram bin); higher equalises harder")
    denoise: Literal["median", "gaussian"] | None = None
    denoise_size: float = 1.0

    @field_validator("size")
    @classmethod
    def _size_dims(cls, value: list[int]) -> list[int]:
        if len(value) not in (2, 3) or min(value) < 4:
            raise ValueError("size must list 2 (2D) or 3 (3D) sizes of at least 4 pixels")
        return value


class AugmentConfig(Strict):
    """Random augmentation on the training set only; each knob off at 0."""

    flip_h: float = Field(0.0, ge=0.0, le=1.0)
    flip_v: float = Field(0.0, ge=0.0, le=1.0)
    rotate_deg: float = Field(0.0, ge=0.0, le=180.0)
    scale: float = Field(0.0, ge=0.0, lt=1.0)
    shift: float = Field(0.0, ge=0.0, lt=0.5)
    elastic: float | list[float] = Field(0.0, description="smooth deformation: each pixel moves up to this many "
                                         "pixels per axis (at most 8); a list gives each spatial axis its own "
                                         "bound, (D,) H, W, e.g. [0, 4, 4] in-plane only for thick slices")
    noise_std: float = Field(0.0, ge=0.0)
    blur_sigma: float = Field(0.0, ge=0.0)
    contrast: float = Field(0.0, ge=0.0, lt=1.0)
    brightness: float = Field(0.0, ge=0.0, lt=1.0)
    gamma: float = Field(0.0, ge=0.0, le=1.0, description="intensity exponent between 1/(1+gamma) and 1+gamma")
    color: float = Field(0.0, ge=0.0, lt=1.0, description="each channel's own contrast factor in [1-color, 1+color]")

    @field_validator("elastic")
    @classmethod
    def _elastic_bounds(cls, value: float | list[float]) -> float | list[float]:
        bounds = value if isinstance(value, list) else [value]
        if (isinstance(value, list) and len(bounds) not in (2, 3)) or any(not 0.0 <= b <= 8.0 for b in bounds):
            raise ValueError("elastic must be a number of pixels in [0, 8], or one such number per spatial axis")
        return value


class ModelConfig(Strict):
    """A registered model by name, with its keyword arguments."""

    name: str = "compact_cnn"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    head: Literal["softmax", "sigmoid"] = "softmax"
    pretrained: str | None = Field(None, description="local weights file to start from (safetensors or state dict)")
    pretrained_layout: Literal["auto", "medsight", "torchvision", "monai", "medicalnet"] = Field(
        "auto", description="key layout of the pretrained file; auto guesses from its keys"
    )
    adapt_channels: Literal["average", "repeat"] = Field(
        "average", description="first convolution with other input channels: average or repeat its kernels"
    )


class TrainConfig(Strict):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    schedule: Literal["none", "cosine", "step", "plateau"] = "cosine"
    step_size: int = Field(10, ge=1)
    gamma: float = Field(0.1, gt=0, le=1)
    warmup_epochs: int = Field(0, ge=0)
    early_stopping_metric: str = Field("auc", description="the metrics.csv column the best epoch and early stopping "
                                       "follow: classification: auc (default), val_loss, train_loss or any "
                                       "validation metric; segmentation: val_dice (its default) or train_loss")
    patience: int = Field(0, ge=0, description="0 turns early stopping off")
    class_weights: Literal["none", "balanced"] = "none"
    balanced_sampling: bool = False
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    seed: int = 0
    members_per_fold: int = Field(1, ge=1, le=16, description="a cross-validation trains this many models per fold, "
                                  "seeds seed .. seed + n - 1, on the fold's same cases; the out-of-fold prediction "
                                  "of a case averages its fold's members")
    num_threads: int = Field(0, ge=0, description="0 uses every core")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda or cuda:N")
    amp: bool = Field(True, description="mixed precision on CUDA")
    cpu_amp: bool = Field(False, description="bfloat16 mixed precision on a CPU with native bf16 (AVX512-BF16/AMX); "
                          "float32 elsewhere")
    compile: bool | Literal["auto"] = Field(
        False, description="torch.compile the training forward/backward (~20 s to compile; eager fallback with a "
        "note if it fails); auto: time the first steps eager and compiled and keep the faster (said in the log)")
    ema: float = Field(0.0, ge=0.0, lt=1.0, description="validate, keep and ship an exponential moving average of "
                       "the weights with this decay per step (e.g. 0.999); 0 turns it off")
    time_limit_min: float | None = Field(None, gt=0)
    anneal_to_time_limit: bool = Field(True, description="cosine schedule with time_limit_min: follow the larger of "
                                       "the epoch and the time progress, so a run its time limit stops ends "
                                       "annealed; false: epochs alone (the same rates on any machine)")
    freeze: str = Field("none", description="none, backbone, or until:LAYER (freeze up to and including LAYER)")
    backbone_lr_factor: float = Field(1.0, gt=0, le=1, description="backbone LR = lr * factor when fine-tuning")
    unfreeze_every: int = Field(0, ge=0, description="gradual unfreezing: one more block every N epochs; 0 off")
    synthetic: str | None = Field(None, description="generator folder (medsight gan train) mixed into training")
    synthetic_ratio: float = Field(0.0, ge=0, description="synthetic samples per real training sample")


class EvalConfig(Strict):
    threshold: Literal["youden", "sensitivity", "fixed"] = "youden"
    target_sensitivity: float = Field(0.9, gt=0, le=1)
    fixed_threshold: float = Field(0.5, gt=0, lt=1)
    bootstrap: int = Field(1000, ge=0)
    ci: float = Field(0.95, gt=0, lt=1)
    calibration: Literal["temperature", "none"] = Field(
        "temperature", description="temperature scaling fitted on the validation logits, stored in the bundle"
    )
    uncertainty: Literal["none", "tta", "mc_dropout"] = Field(
        "tta", description="per-case entropy from flip TTA, MC dropout, or the single prediction (none)"
    )
    uncertainty_passes: int = Field(4, ge=1, le=64, description="passes for tta (at most 2**dims flips) or mc_dropout")
    tta: Literal["none", "flips", "auto"] = Field(
        "none", description="test-time augmentation of every prediction: flips averages over the augmentation's "
        "flips (augment.flip_h, flip_v); auto keeps them only where the out-of-fold predictions of a "
        "cross-validation say they pay")


class PredictConfig(Strict):
    """What prediction does with an input outside the training data's domain (stored in the bundle)."""

    out_of_domain: Literal["flag", "refuse", "off"] = Field(
        "flag", description="flag: answer, with out_of_domain and the reason; refuse: no answer, the reason "
        "instead; off: no check")


class SegmentConfig(Strict):
    """Segmentation training and inference; a ``None`` size takes the plan's value (``medsight plan``).

    The inference keys (``overlap``, ``mirror_tta``, ``transpose_tta``, ``largest_component``, ``thresholds``,
    ``centre_logits``) are saved in the bundle and replayed by ``medsight evaluate`` and ``medsight predict``.
    """

    patch_size: list[int] | None = Field(None, description="training and sliding-window patch; default: the plan's")
    batch_size: int | None = Field(None, ge=1, description="patches per step; default: the plan's")
    steps_per_epoch: int = Field(100, ge=1)
    foreground_fraction: float = Field(0.33, ge=0.0, le=1.0, description="share of foreground-centred patches")
    loss: Literal["dice_ce", "dice_focal", "focal", "tversky", "ce"] = "dice_ce"
    loss_kwargs: dict[str, Any] = Field(default_factory=dict, description="passed to the loss (e.g. Tversky alpha "
                                        "and beta, ce class weight, batch: true for a Dice over the whole batch)")
    cldice: float = Field(0.0, ge=0.0, lt=1.0, description="weight w of the soft clDice (centreline) term for "
                          "thin tubular structures: (1 - w) * loss + w * clDice; 0 = off")
    deep_supervision: bool = Field(False, description="dynunet only: loss on every decoder level")
    overlap: float = Field(0.5, ge=0.0, lt=1.0, description="sliding-window overlap")
    mirror_tta: bool = Field(False, description="average predictions over every flip of the spatial axes")
    transpose_tta: bool = Field(False, description="also average over the last two spatial axes swapped (2D, with "
                                "mirror_tta: all 8 symmetries of the square); for structures of any orientation")
    largest_component: bool = Field(False, description="keep only the largest connected region per class")
    thresholds: dict[int, float] = Field(
        default_factory=dict, description="class -> probability threshold; binary tasks choose one on validation"
    )
    tune_threshold: bool = Field(True, description="binary tasks: pick the threshold that maximises val Dice")
    centre_logits: bool = Field(False, description="binary tasks: shift each image's foreground logits so that "
                                "their median is the validation images' mean median (for photographs whose "
                                "probabilities run high or low as a whole); the median voxel must be background")
    val_every: int = Field(1, ge=1, description="validate (sliding window, Dice) every N epochs, and always after "
                           "the last one and when the time limit stops training")
    ensemble: bool = Field(True, description="after a k-fold cross-validation (data.folds > 1) RUN/model is the "
                           "ensemble of the k fold models, its threshold chosen on their out-of-fold predictions")
    memory_budget_mb: float = Field(2000, gt=0, description="what the plan fits patch and batch into")
    resample: bool = Field(True, description="train and predict at the plan's target spacing (masks come back "
                           "on the input's own grid)")
    plan: dict[str, Any] = Field(default_factory=dict, description="overrides of plan.json keys")

    @field_validator("thresholds")
    @classmethod
    def _threshold_range(cls, value: dict[int, float]) -> dict[int, float]:
        if any(not 0.0 < t < 1.0 or c < 1 for c, t in value.items()):
            raise ValueError("thresholds map foreground classes (1, 2, ...) to probabilities strictly inside (0, 1)")
        return value


class DetectConfig(Strict):
    """Lesion detection: anchors, the detector's post-processing and the operating point (stored in the bundle)."""

    anchor_sizes: list[list[float]] | None = Field(
        None, description="anchor extents in input pixels per feature level, each [size_axis0, size_axis1(, axis2)] "
        "(default: from the plan's box-size distribution)")
    aspect_ratios: list[float] = Field([0.5, 1.0, 2.0], description="anchor height/width ratios (2D)")
    score_floor: float = Field(0.05, ge=0, lt=1, description="boxes scored below this are dropped before NMS")
    nms_iou: float = Field(0.5, gt=0, le=1, description="IoU above which non-maximum suppression drops a box")
    max_detections: int = Field(100, ge=1, description="boxes kept per image after NMS")
    operating_fp_per_image: float = Field(1.0, gt=0, description="the score threshold shipped in the bundle is the "
                                          "validation FROC point at this many false positives per image")


class RunConfig(Strict):
    """Everything a training run needs."""

    name: str = "run"
    task: Task = "classification"
    data: DataConfig = Field(default_factory=DataConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    predict: PredictConfig = Field(default_factory=PredictConfig)
    segment: SegmentConfig = Field(default_factory=SegmentConfig)
    detect: DetectConfig = Field(default_factory=DetectConfig)

    @model_validator(mode="after")
    def _segmentation_monitors_dice(self) -> RunConfig:
        """``train.early_stopping_metric`` left unset means the task's own: ``auc`` (the field's default) for
        classification, ``val_dice`` for segmentation, whose rows have no AUC."""
        if self.task == "segmentation" and "early_stopping_metric" not in self.train.model_fields_set:
            self.train = self.train.model_copy(update={"early_stopping_metric": "val_dice"})
        return self


def list_recipes() -> list[str]:
    """Names of the packaged recipes (``--recipe NAME``)."""
    folder = resources.files("medsight.recipes")
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_config(
    path: str | Path | None = None,
    *,
    recipe: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunConfig:
    """Build a validated :class:`RunConfig`.

    Layers, later wins: defaults, the recipe (``none``: no recipe), the YAML file, then ``overrides``
    (dotted keys such as ``"train.lr"``).

    Raises:
        ConfigError: an unknown recipe, unreadable YAML, or a value that fails validation.
    """
    raw: dict[str, Any] = {}
    if recipe is not None and recipe != "none":
        if recipe not in list_recipes():
            raise ConfigError(
                f"--recipe {recipe}", "no such recipe", f"choose one of: {', '.join(list_recipes())} (or none)"
            )
        text = resources.files("medsight.recipes").joinpath(f"{recipe}.yaml").read_text()
        _merge(raw, yaml.safe_load(text) or {})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(path, "config file not found", "check the path")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(path, f"not valid YAML ({exc})", "fix the syntax") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(path, "the top level must be a mapping", "see the README's config example")
        _merge(raw, loaded)
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(raw, key, value)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        where = path or (f"recipe {recipe}" if recipe else "config")
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(where, problems, "fix these keys (see the README's config reference)") from exc


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML, whole or not at all (:mod:`medsight.atomic_write`).

    Raises:
        OutputWriteError: the disk is full, or the folder is not writable; an older file stays as it was.
    """
    atomic_write_text(path, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def _merge(into: dict[str, Any], other: dict[str, Any]) -> None:
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _set_dotted(into: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = into
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(key, f"'{part}' is not a section", "use a dotted path such as train.lr")
    node[leaf] = value
