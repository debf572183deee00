"""Segmenter: bundle -> preprocess -> sliding window -> postprocess -> mask in the source geometry.

The segmentation counterpart of :class:`~medsight.inference.predictor.Predictor`. The bundle's
``segmentation`` section says how: the plan's intensity normalisation, the window overlap,
mirror test-time augmentation, per-class thresholds (binary tasks: chosen on validation) and
largest-component cleaning. ``medsight evaluate``, ``medsight predict`` and the service all
call this one class, so their masks agree.

Example:
    >>> segmenter = Segmenter("runs/drive/model")
    >>> sample, result = segmenter.segment_file("21_test.tif")
    >>> write_mask(result.labels, sample, Path("21_mask.png"))  # from medsight.inference.postprocess
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from medsight.bundle import Bundle, load_bundle
from medsight.data.file_errors import file_error, one_line
from medsight.errors import BundleError
from medsight.inference.postprocess import (
    beside_mask,
    centre_logits,
    keep_largest_component,
    probs_to_labels,
    write_mask,
    write_probability_maps,
)
from medsight.inference.uncertainty import case_uncertainty, entropy_map
from medsight.sample import Sample

#: the inference profiles a bundle may have (:mod:`medsight.segmentation.profiles`)
PROFILES = ("fast", "accurate")


@dataclass
class SegmentationResult:
    """A predicted label map on the input's own grid, its probabilities and per-class sizes."""

    labels: np.ndarray
    probs: np.ndarray
    label_names: list[str]

    @property
    def uncertainty(self) -> np.ndarray:
        """Per-voxel predictive entropy in [0, 1] (of the mirror-TTA mean when the bundle uses TTA)."""
        return entropy_map(self.probs)

    @property
    def case_uncertainty(self) -> float:
        return case_uncertainty(self.uncertainty, self.labels)

    @property
    def voxel_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels.ravel(), minlength=len(self.label_names))
        return {name: int(counts[k]) for k, name in enumerate(self.label_names)}


class Segmenter:
    """Loads a segmentation bundle once and segments samples or files.

    Two backends run the network, as for :class:`~medsight.inference.predictor.Predictor`: ``torch``, and
    ``onnx``, the ``model.onnx`` of ``medsight export BUNDLE --format onnx`` (a fold ensemble whose members are
    centred one by one also needs its member files, ``model.member<k>.onnx``) run by ONNX Runtime on the CPU.
    ``auto`` (the default) takes ``onnx`` when the bundle folder has a current export and ONNX Runtime is
    installed, on the CPU, without ``mixed_precision``; else ``torch``.
    """

    def __init__(self, bundle: Bundle | str | Path, *, device: str = "cpu", mixed_precision: bool = False,
                 backend: str = "auto", profile: str | None = None) -> None:
        """``mixed_precision``: the network runs under autocast (bfloat16 on a CPU with native bf16:
        about 2x faster; see :func:`~medsight.inference.segment.sliding_window_probs`); PyTorch only.
        ``profile``: ``fast`` or ``accurate``, the bundle's measured inference profiles
        (:mod:`medsight.segmentation.profiles`); None: the bundle's default (a bundle without profiles predicts
        with its own options, which is what ``accurate`` is).

        Raises:
            BundleError: not a segmentation bundle; ``backend="onnx"`` without a current export.
            ConfigError: an unknown backend or profile, ``fast`` on a bundle without profiles, or ``onnx`` with
                ``mixed_precision`` or on a GPU.
        """
        import torch

        from medsight.errors import ConfigError
        from medsight.inference.onnx_backend import BACKENDS, onnx_export_record

        if backend not in BACKENDS:
            raise ConfigError(f"backend={backend}", "unknown backend", f"use one of {', '.join(BACKENDS)}")
        if backend == "onnx" and mixed_precision:
            raise ConfigError("--mixed-precision", "is for the PyTorch backend", "drop it, or use backend torch")
        folder = None if isinstance(bundle, Bundle) else Path(bundle)
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        if self.bundle.task != "segmentation" or self.bundle.segmentation is None:
            raise BundleError(
                bundle if not isinstance(bundle, Bundle) else "bundle",
                f"is a {self.bundle.task} model, not a segmentation model",
                "use medsight.inference.predictor.Predictor for classifiers",
            )
        self.settings = self.bundle.segmentation
        #: the profile's name and options (None: the bundle's own options)
        self.profile_name, self.profile = _profile(self.settings, profile)
        self.thresholds = self.settings.class_thresholds()
        #: binary bundles trained with ``segment.centre_logits``: each image's median foreground logit
        self.logit_median = self.settings.logit_median
        self.device = torch.device(device)
        self.mixed_precision = mixed_precision
        record = None if mixed_precision and backend == "auto" else onnx_export_record(
            folder, backend, device_type=self.device.type,
            check=lambda found: self._export_problem(folder, found))
        self.backend = "onnx" if record is not None else "torch"
        #: the networks whose probabilities are averaged: the model, or a centred ensemble's members one by one
        self.networks = self._onnx_networks(folder, record) if record is not None else self._torch_networks()

    @cached_property
    def model(self):
        """The PyTorch network with the bundle's weights, in eval mode on ``device`` (built on first use with
        the ONNX backend)."""
        return self.bundle.build_model().to(self.device).eval()

    @property
    def centred_members(self) -> bool:
        """A fold ensemble whose members' maps are centred one by one before they are averaged."""
        return self.logit_median is not None and self.bundle.model.name == "fold_ensemble"

    def _torch_networks(self) -> list:
        return list(self.model.members) if self.centred_members else [self.model]

    def _export_problem(self, folder: Path, record: dict) -> str | None:
        """What makes a current ``model.onnx`` unfit here: a centred ensemble's member files missing or changed."""
        from medsight.hashing import file_sha256

        if not self.centred_members:
            return None
        members = record.get("members") or []
        if not members or len(members) != int(self.bundle.model.kwargs.get("members", len(members))):
            return "its ONNX export has no member files (each member is centred on its own)"
        for member in members:
            path = folder / member["file"]
            if not path.is_file() or file_sha256(path) != member["sha256"]:
                return f"{member['file']} is missing or differs from the one export.json records"
        return None

    def _onnx_networks(self, folder: Path, record: dict) -> list:
        import torch

        from medsight.inference.onnx_backend import OnnxLogits, onnx_session

        threads = torch.get_num_threads()
        files = [m["file"] for m in record["members"]] if self.centred_members else [record["file"]]
        return [OnnxLogits(onnx_session(folder / name, threads=threads)) for name in files]

    @property
    def label_names(self) -> list[str]:
        return self.bundle.label_names

    @property
    def precision(self) -> str:
        """What the network computes in: ``float32``, or the autocast dtype ``mixed_precision`` gives here."""
        from medsight.runtime.device import autocast_dtype

        dtype = autocast_dtype(self.device, self.mixed_precision, cpu_bf16=self.mixed_precision)
        return "float32" if dtype is None else str(dtype).removeprefix("torch.")

    @property
    def volumes(self) -> bool:
        """A 3D model: it segments volumes (a DICOM series as one)."""
        return self.bundle.spatial_dims == 3

    def prepare(self, sample: Sample) -> np.ndarray:
        """The network input for a whole image: the bundle's intensity steps and normalisation."""
        from medsight.transforms.preprocess import preprocess_for_segmentation

        return preprocess_for_segmentation(sample, self.bundle.preprocess, self.settings.normalization)

    def probabilities(self, sample: Sample) -> np.ndarray:
        """``(K, *spatial)`` softmax probabilities on the sample's grid.

        With a target spacing in the bundle, the image is resampled to it, predicted there,
        and the probabilities are interpolated back onto the sample's own grid. A bundle with a
        ``logit_median`` then centres them (:meth:`centred`); a fold ensemble's members are each
        centred before their probabilities are averaged, as the out-of-fold predictions its
        level and threshold come from were (each by one member).
        """
        from medsight.inference.predictor import check_spatial_dims
        from medsight.inference.segment import sliding_window_probs, tta_views
        from medsight.transforms.preprocess import resize, spacing_shape

        check_spatial_dims(sample, self.bundle.spatial_dims, volumes="a NIfTI or NRRD file, a multi-frame DICOM, "
                           "or a folder of DICOM slices")
        image = self.prepare(sample)  # first: it says what is wrong with an image of the wrong kind
        grid = spacing_shape(sample.spatial_shape, sample.spacing, self.settings.target_spacing)
        working = resize(image, grid)

        views = tta_views(self.bundle.spatial_dims, mirror_tta=self.settings.mirror_tta,
                          transpose_tta=self.settings.transpose_tta)
        if self.profile is not None:
            views = views[:self.profile.views]

        def predict(net) -> np.ndarray:
            probs = sliding_window_probs(
                net,
                working,
                patch_size=self.bundle.preprocess.size,
                overlap=self.settings.overlap if self.profile is None else self.profile.overlap,
                views=views,
                device=self.device,
                mixed_precision=self.mixed_precision,
            )
            return self.centred(resize(probs, sample.spatial_shape))

        if len(self.networks) == 1:
            return predict(self.networks[0])
        return sum(predict(net) for net in self.networks) / np.float32(len(self.networks))  # two maps at a time

    def centred(self, probs: np.ndarray) -> np.ndarray:
        """``probs`` with the foreground logits shifted so that their median is the bundle's ``logit_median``
        (:func:`~medsight.inference.postprocess.centre_logits`); unchanged when the bundle has none."""
        return probs if self.logit_median is None else centre_logits(probs, self.logit_median)

    def labels_from(self, probs: np.ndarray) -> np.ndarray:
        """Thresholds, then largest-component cleaning, as the bundle says."""
        labels = probs_to_labels(probs, thresholds=self.thresholds)
        if self.settings.largest_component:
            labels = keep_largest_component(labels)
        return labels

    def segment_sample(self, sample: Sample) -> SegmentationResult:
        probs = self.probabilities(sample)
        return SegmentationResult(self.labels_from(probs), probs, self.label_names)

    def write_dicom_seg(self, labels: np.ndarray, sample: Sample, path: Path) -> Path:
        """``labels`` of a DICOM series ``sample`` as a DICOM SEG that references it, naming this model."""
        from medsight.io.seg_writer import write_dicom_seg

        return write_dicom_seg(labels, sample, path, label_names=self.label_names, model=self.bundle.model.name,
                               version=self.bundle.version)

    def segment_file(self, path: str | Path) -> tuple[Sample, SegmentationResult]:
        from medsight.io import read_image

        sample = read_image(path)
        return sample, self.segment_sample(sample)


def check_profile(bundle: Bundle, name: str) -> None:
    """A clear error now when ``name`` is not a profile ``bundle`` can predict with (see :func:`_profile`).

    Raises:
        ConfigError: another task than segmentation, an unknown profile, or ``fast`` without measured profiles.
    """
    from medsight.errors import ConfigError

    if bundle.task != "segmentation" or bundle.segmentation is None:
        raise ConfigError(f"--profile {name}", f"is for segmentation models (this is a {bundle.task} model)",
                          "drop --profile")
    _profile(bundle.segmentation, name)


def _profile(settings, name: str | None):
    """``(name, options)`` of the profile asked for (None: the bundle's default); ``(name, None)`` where the bundle's
    own options are what it asks for.

    Raises:
        ConfigError: an unknown profile, or ``fast`` on a bundle trained before profiles were measured.
    """
    from medsight.errors import ConfigError

    if name not in (None, *PROFILES):
        raise ConfigError(f"--profile {name}", "is not an inference profile", f"use one of {', '.join(PROFILES)}")
    chosen = name or settings.default_profile
    if chosen in (None, "accurate"):  # every view at the bundle's overlap: its own options
        return "accurate", None
    if chosen not in settings.profiles:
        raise ConfigError(f"--profile {chosen}", "this bundle has no measured profiles (it was trained before they "
                          "were measured)", "use --profile accurate (its own options), or train it again")
    return chosen, settings.profiles[chosen]


def _write_uncertainty(entropy: np.ndarray, sample: Sample, mask: Path) -> Path:
    """Next to the mask: ``*_uncertainty.png`` (0-255) for a PNG mask, else ``*_uncertainty.nii.gz`` (float)."""
    from medsight.io.image import write_png
    from medsight.io.nifti import write_nifti

    path = beside_mask(mask, "uncertainty")
    if path.suffix == ".png":
        return write_png(np.round(entropy * 255).astype(np.uint8), path)
    return write_nifti(entropy, sample.affine, path)


def mask_path(source: Path, out_dir: Path, sample: Sample) -> Path:
    """``out_dir/<stem>_mask.png`` for 2D images, ``.nii.gz`` for volumes (and 2D DICOM/NIfTI)."""
    from medsight.io import image_stem, is_picture

    suffix = ".png" if sample.spatial_dims == 2 and is_picture(source) else ".nii.gz"
    return out_dir / f"{image_stem(source)}_mask{suffix}"


def segmentation_inputs(inputs: list[Path], *, volumes: bool) -> list[Path]:
    """What to segment, in a stable order: files as given, folders searched recursively.

    For a 3D model (``volumes``) a single-frame DICOM file stands for its folder, so that a
    series is segmented as one volume (its slices sorted by position:
    :func:`~medsight.io.dicom_series.read_dicom_series`); NIfTI, NRRD and multi-frame DICOM
    files are volumes of their own. A 2D model segments every file.
    """
    from medsight.inference.predictor import expand_inputs
    from medsight.io.dicom import is_dicom_file, number_of_frames, open_dataset

    files = expand_inputs(inputs)
    if not volumes:
        return files
    chosen: dict[Path, None] = {}
    for path in files:
        if is_dicom_file(path):
            try:
                if number_of_frames(open_dataset(path, stop_before_pixels=True)) == 1:
                    path = path.parent
            except Exception:  # unreadable, whatever raised: it stays a file of its own and gets an error row
                pass
        chosen.setdefault(path)
    return list(chosen)


def segment_fields(label_names: list[str], *, probabilities: bool = False) -> list[str]:
    """The columns of a segmenter's ``predictions.csv`` (``prob_map_<class>`` with ``probabilities``)."""
    maps = [f"prob_map_{n}" for n in label_names[1:]] if probabilities else []
    return ["path", "mask", "dicom_seg", "uncertainty_map", "uncertainty", *(f"voxels_{n}" for n in label_names),
            *maps, "error"]


def segment_row(segmenter: Segmenter, path: Path, out: Path, *, probabilities: bool = False) -> dict[str, Any]:
    """Segment one file, write its mask and uncertainty map under ``out``; the ``predictions.csv`` row.

    A DICOM series (a folder) also gets ``<stem>_seg.dcm``, a DICOM SEG that references it. With
    ``probabilities`` each foreground class's probability map is written next to the mask
    (:func:`~medsight.inference.postprocess.write_probability_maps`). A file that fails in any
    way (:func:`~medsight.data.file_errors.file_error`) gives a row with its one-line reason in
    ``error`` instead of raising.
    """
    row: dict[str, Any] = {"path": str(path), "mask": "", "error": ""}
    try:
        sample, result = segmenter.segment_file(path)
        mask = write_mask(result.labels, sample, mask_path(path, out, sample))
        row["mask"] = str(mask)
        if sample.meta.get("slice_files"):
            row["dicom_seg"] = str(segmenter.write_dicom_seg(result.labels, sample, beside_mask(mask, "seg", ".dcm")))
        row["uncertainty_map"] = str(_write_uncertainty(result.uncertainty, sample, mask))
        row["uncertainty"] = round(result.case_uncertainty, 6)
        row.update({f"voxels_{n}": c for n, c in result.voxel_counts.items()})
        if probabilities:
            maps = write_probability_maps(result.probs, sample, mask, segmenter.label_names)
            row.update({f"prob_map_{n}": str(p) for n, p in maps.items()})
    except Exception as exc:  # one file's failure, whatever raised it, is its row; the batch goes on
        row["error"] = one_line(file_error(path, exc))
    return row


def segment_to_folder(
    *, bundle: str | Path, inputs: list[Path], out: Path, progress: bool = True, resume: bool = False,
    probabilities: bool = False, mixed_precision: bool = False, backend: str = "auto", profile: str | None = None,
) -> dict[str, int]:
    """Segment every input and write one mask per file plus ``out/predictions.csv``.

    The CSV has a row per file: the mask path and the voxel count of each class, or the
    error that stopped it (an unreadable file never stops the others). With ``resume``, files
    that already have a row are skipped (``counts["skipped"]``). With ``probabilities``, each
    foreground class's probability map is written next to the mask, its path in the row.
    ``mixed_precision``, ``backend`` and ``profile``: see :class:`Segmenter`.
    """
    from medsight.inference.results_csv import ResultsCsv
    from medsight.progress import track

    segmenter = Segmenter(bundle, mixed_precision=mixed_precision, backend=backend, profile=profile)
    files = segmentation_inputs(inputs, volumes=segmenter.volumes)
    out = Path(out)
    counts = {"ok": 0, "errors": 0, "skipped": 0}
    fields = segment_fields(segmenter.label_names, probabilities=probabilities)
    with ResultsCsv(out / "predictions.csv", fields, resume=resume) as results:
        todo = [path for path in files if str(path) not in results.done]
        counts["skipped"] = len(files) - len(todo)
        for path in track(todo, description="segmenting", enabled=progress):
            row = segment_row(segmenter, path, out, probabilities=probabilities)
            counts["errors" if row["error"] else "ok"] += 1
            results.write(row)
    return counts
