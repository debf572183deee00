"""Parity of a detection export with PyTorch: the raw head outputs, then the boxes after the shared post-processing.

**Inputs**: up to :data:`REAL_IMAGES` validation images of the data the bundle was trained on (or ``--data``),
brought to the input by the bundle's own preprocessing (:meth:`Detector.prepare`), :data:`NOISE_IMAGES` images of
Gaussian noise (a z-scored image's range) and one all-zero image (a constant image after z-scoring; the heads'
group norms see flat maps), all at the bundle's input size padded as MONAI pads it; plus one noise image a stride
step larger on every axis, for the graph's dynamic spatial axes. The graph is run at full batches and at batch 1.

**Head outputs**: for each output the largest absolute difference between ONNX Runtime and PyTorch (float32) is
checked against a tolerance derived from float32 arithmetic on this very network: PyTorch's own float32 error,
measured against the same network and inputs in float64, times :data:`ERROR_FACTOR` (ONNX Runtime sums in
another order, with errors of the same size: the two differ by up to about twice one of them), and never below
:data:`ULPS` float32 units in the last place of the largest output. A box's score is the sigmoid of a logit, so
scores may differ by a quarter of the logits' tolerance.

**Boxes**: the shared post-processing (:meth:`Detector.boxes_from_heads`) on both sets of head outputs; each PyTorch
box must have an ONNX box of the same label with IoU > :data:`BOX_IOU` and a score within the score tolerance, and
the reverse. A box may be missing from one side only where the post-processing's cuts meet values closer than the
tolerances: a score at the score floor, at a level's top-k cut or at the box limit; two boxes of the same class and
tied scores, one kept by each backend (the order of tied scores is arbitrary: a constant image gives many); or an
NMS decision between two boxes of the same class whose scores are tied or whose IoU is within :data:`NMS_MARGIN` of
``nms_iou``. Each such box is listed under ``ties``; any other unmatched box fails the export. The all-zero image is
left out of the box check (its boxes are counted under ``constant_image``): its scores are exactly equal at every
position away from the border, and which of those tied boxes NMS keeps follows float32 rounding and cascades (a
different winner suppresses different neighbours).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medsight.boxes import Boxes
from medsight.errors import DatasetError, MedsightError
from medsight.export.errors import ExportError

REAL_IMAGES = 8
NOISE_IMAGES = 2
BATCH = 4
#: ONNX Runtime's head outputs may differ from PyTorch's by this many times PyTorch's own float32 error
ERROR_FACTOR = 4
#: ... and by at least this many float32 units in the last place of the largest output
ULPS = 16
#: a PyTorch box and its ONNX box overlap at least this much
BOX_IOU = 0.99
#: an NMS decision is a tie when the IoU of the two boxes is this close to nms_iou
NMS_MARGIN = 1e-3
EPS32 = float(np.finfo(np.float32).eps)
CONSTANT_NOTE = ("a constant image gives the same scores at every position away from its border: which of the tied "
                 "boxes NMS keeps depends on float32 rounding, so its boxes are counted, not required to match")


@dataclass
class HeadInputs:
    """Padded graph inputs ``(N, C, *padded)``, the input size before the padding, a name per image, where the
    images came from, and ``other``: one input of another size."""

    images: np.ndarray
    size: list[int]
    names: list[str]
    source: str
    other: np.ndarray


def load_head_inputs(bundle, detector, folder: Path, *, data: str | None, progress: bool = False) -> HeadInputs:
    """Real validation images, noise and a zero image for ``bundle`` (see the module).

    Raises:
        DatasetError: no reachable data, or none of its images readable.
    """
    import torch

    from medsight.data.det_layouts import open_detection_set
    from medsight.export.parity import _data_path
    from medsight.progress import track

    path = _data_path(bundle, folder, data)
    dataset = open_detection_set(path, class_names=list(bundle.label_names))
    cases, split = _validation_cases(bundle, dataset)
    images, names, unreadable = [], [], 0
    for case in track(cases, description="parity images", enabled=progress):
        if len(images) == REAL_IMAGES:
            break
        try:
            images.append(detector.prepare(dataset.read(case))[0])
        except MedsightError:
            unreadable += 1
            continue
        names.append(case.id)
    if not images:
        raise DatasetError(path, "none of its images could be read for the export check", "pass --data PATH")
    size = [int(n) for n in bundle.preprocess.size]
    rng = np.random.default_rng(0)
    channels = images[0].shape[0]
    noise = [rng.normal(0.0, 1.0, (channels, *size)).astype(np.float32) for _ in range(NOISE_IMAGES)]
    stack = np.stack([*images, *noise, np.zeros((channels, *size), np.float32)])
    names += [f"noise {k + 1}" for k in range(NOISE_IMAGES)] + ["zeros"]
    padded = detector.pad(torch.from_numpy(stack)).numpy()
    step = [int(n) for n in detector.detector.size_divisible]
    other = rng.normal(0.0, 1.0, (1, channels, *(n + s for n, s in zip(padded.shape[2:], step, strict=True))))
    skipped = f", {unreadable} unreadable skipped" if unreadable else ""
    source = (f"{len(images)} {split} image(s) of {path}{skipped}, {NOISE_IMAGES} noise image(s) and a zero image "
              f"at {size} padded to {list(padded.shape[2:])}; one noise image at {list(other.shape[2:])}")
    return HeadInputs(padded, size, names, source, other.astype(np.float32))


def check_heads(run, graph, inputs: HeadInputs) -> dict[str, Any]:
    """ONNX Runtime's head outputs (``run``: padded batch -> the two outputs) against PyTorch's (``graph``).

    Returns:
        ``{"per_output": {name: {max_abs_diff, tolerance, torch_float32_error, largest_output}}, "samples",
        "batch_sizes", "input_shapes", "max_abs_diff", "tolerance", "torch": (classification, box_regression),
        "onnx": (...)}``; the last two are the outputs on ``inputs.images``.

    Raises:
        ExportError: an output differs by more than its tolerance.
    """
    from medsight.inference.detector_onnx import HEAD_OUTPUTS

    torch32, torch64 = _torch_runner(graph), _torch_runner(copy.deepcopy(graph).double())
    mine, single, other = _batched(run, inputs.images), run(inputs.images[:1]), run(inputs.other)
    theirs, precise = _batched(torch32, inputs.images), _batched(torch64, inputs.images)
    theirs_other, precise_other = torch32(inputs.other), torch64(inputs.other)
    per_output = {}
    for k, name in enumerate(HEAD_OUTPUTS):
        diff = max(_max_diff(mine[k], theirs[k]), _max_diff(single[k], theirs[k][:1]),
                   _max_diff(other[k], theirs_other[k]))
        error = max(_max_diff(theirs[k], precise[k]), _max_diff(theirs_other[k], precise_other[k]))
        largest = max(float(np.abs(precise[k]).max()), float(np.abs(precise_other[k]).max()))
        tolerance = max(ERROR_FACTOR * error, ULPS * EPS32 * largest)
        per_output[name] = {"max_abs_diff": diff, "tolerance": tolerance, "torch_float32_error": error,
                            "largest_output": largest}
        if diff > tolerance:
            raise ExportError("export parity", f"the exported {name} outputs differ from PyTorch's by up to "
                              f"{diff:.3g}, above the {tolerance:.3g} allowed ({ERROR_FACTOR} x PyTorch's own "
                              f"float32 error {error:.3g}) on {inputs.source}",
                              "nothing was written; report the model and this message")
    worst = max(per_output.values(), key=lambda o: o["max_abs_diff"] / o["tolerance"])
    return {"per_output": per_output, "samples": len(inputs.images) + 1, "source": inputs.source,
            "batch_sizes": sorted({1, min(BATCH, len(inputs.images))}),
            "input_shapes": [list(inputs.images.shape[1:]), list(inputs.other.shape[1:])],
            "max_abs_diff": worst["max_abs_diff"], "tolerance": worst["tolerance"], "torch": theirs, "onnx": mine}


def check_boxes(detector, heads: dict[str, Any], inputs: HeadInputs) -> dict[str, Any]:
    """The boxes of both backends' head outputs after the shared post-processing, compared (see the module).

    Raises:
        ExportError: a box without its counterpart that no tie explains, or a score difference above tolerance.
    """
    import torch

    settings = detector.settings
    score_tol = 0.25 * heads["per_output"]["classification"]["tolerance"] + 2 * EPS32
    padded = inputs.images.shape[2:]
    found = {name: detector.boxes_from_heads(torch.from_numpy(outputs[0]), torch.from_numpy(outputs[1]), padded,
                                             inputs.size) for name, outputs in (("torch", heads["torch"]),
                                                                                ("onnx", heads["onnx"]))}
    cuts = [settings.score_floor, *_topk_cuts(detector, heads["torch"][0], padded)]
    matched, ious, score_diffs, ties, unexplained = 0, [], [], [], []
    for k, name in enumerate(inputs.names[:-1]):  # the last is the constant image: below
        pairs, alone = _match(found["torch"][k], found["onnx"][k])
        matched += len(pairs)
        ious += [iou for _, _, iou, _ in pairs]
        score_diffs += [diff for _, _, _, diff in pairs]
        for backend, box, other in alone:
            swapped = [b for side, b, _ in alone if side != backend and b.labels[0] == box.labels[0]
                       and abs(float(b.scores[0]) - float(box.scores[0])) <= score_tol]
            why = "tied in score with a box the other backend kept instead" if swapped else \
                _tie(box, other, found[backend][k], cuts, settings, score_tol)
            entry = {"image": name, "only_in": backend, "label": int(box.labels[0]),
                     "score": float(box.scores[0]), "why": why}
            (ties if why else unexplained).append(entry)
    flat = [len(found["torch"][-1]), len(found["onnx"][-1]), len(_match(found["torch"][-1], found["onnx"][-1])[0])]
    result = {"images": len(inputs.names) - 1, "torch_boxes": sum(map(len, found["torch"][:-1])),
              "onnx_boxes": sum(map(len, found["onnx"][:-1])), "matched": matched,
              "min_iou": min(ious, default=1.0), "max_score_diff": max(score_diffs, default=0.0),
              "score_tolerance": score_tol, "iou_required": BOX_IOU, "ties": ties,
              "constant_image": {"torch_boxes": flat[0], "onnx_boxes": flat[1], "matched": flat[2],
                                 "note": CONSTANT_NOTE}}
    if unexplained or result["max_score_diff"] > score_tol:
        raise ExportError("export parity", f"the exported model's boxes differ from PyTorch's: {len(unexplained)} "
                          f"box(es) without a counterpart (first: {unexplained[:1]}), score difference up to "
                          f"{result['max_score_diff']:.3g} (allowed {score_tol:.3g})",
                          "nothing was written; report the model and this message")
    return result


def _match(mine: Boxes, theirs: Boxes) -> tuple[list, list]:
    """Greedy pairs of same-label boxes with IoU > BOX_IOU (``(i, j, iou, score diff)``), and the boxes left:
    ``(backend, the box, the other backend's boxes)``."""
    from monai.data.box_utils import box_iou

    iou = box_iou(mine.corners, theirs.corners) if len(mine) and len(theirs) else np.zeros((len(mine), len(theirs)))
    iou = np.where(mine.labels[:, None] == theirs.labels[None, :], iou, 0.0)
    pairs, used = [], set()
    for i in range(len(mine)):
        candidates = [j for j in np.argsort(-iou[i], kind="stable") if j not in used and iou[i, j] > BOX_IOU]
        if candidates:
            j = int(candidates[0])
            used.add(j)
            pairs.append((i, j, float(iou[i, j]), abs(float(mine.scores[i]) - float(theirs.scores[j]))))
    left_mine = [i for i in range(len(mine)) if i not in {p[0] for p in pairs}]
    left_theirs = [j for j in range(len(theirs)) if j not in used]
    alone = [("torch", mine.select(_one(len(mine), i)), theirs) for i in left_mine]
    alone += [("onnx", theirs.select(_one(len(theirs), j)), mine) for j in left_theirs]
    return pairs, alone


def _tie(box: Boxes, other: Boxes, own: Boxes, cuts: list[float], settings, score_tol: float) -> str | None:
    """Why a box of one backend may lack its counterpart in the other (``other``), or None."""
    from monai.data.box_utils import box_iou

    score = float(box.scores[0])
    if any(abs(score - cut) <= score_tol for cut in cuts):
        return "its score is at the score floor or a level's top-k cut"
    if len(own) >= settings.max_detections and score <= float(own.scores.min()) + score_tol:
        return "its score is at the max_detections cut"
    same = other.select(other.labels == box.labels[0])
    if len(same):
        overlap = box_iou(box.corners, same.corners)[0]
        near = overlap > settings.nms_iou - NMS_MARGIN
        tied = (np.abs(same.scores - score) <= score_tol) | (np.abs(overlap - settings.nms_iou) <= NMS_MARGIN)
        if np.any(near & tied):
            return "an NMS decision between tied boxes of its class"
    return None


def _topk_cuts(detector, classification: np.ndarray, padded) -> list[float]:
    """The scores at which a level's top-k cut fell (levels with more candidates above the floor than top-k)."""
    import torch

    _, locations = detector._anchors_of(tuple(int(n) for n in padded))
    selector = detector.detector.box_selector
    per_level = [n * detector.detector.num_anchors_per_loc for n in locations]
    cuts = []
    for level in torch.from_numpy(classification).split(per_level, dim=1):
        for scores in torch.sigmoid(level).flatten(1):
            above = scores[scores > selector.score_thresh]
            if len(above) > selector.topk_candidates_per_level:
                cuts.append(float(above.topk(selector.topk_candidates_per_level).values[-1]))
    return cuts


def _one(n: int, i: int) -> np.ndarray:
    mask = np.zeros(n, bool)
    mask[i] = True
    return mask


def _torch_runner(graph):
    import torch

    dtype = next(graph.parameters()).dtype

    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            outputs = graph(torch.from_numpy(batch).to(dtype))
        return tuple(o.numpy() for o in outputs)

    return run


def _batched(run, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    parts = [run(images[i:i + BATCH]) for i in range(0, len(images), BATCH)]
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(2))


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def _validation_cases(bundle, dataset) -> tuple[list, str]:
    """The bundle's validation cases on ``dataset`` (its recorded ids, else its split rules), else every case."""
    from medsight.data.splits import resolve_splits

    recorded = set(bundle.split.of("val"))
    cases = [case for case in dataset.cases if case.id in recorded]
    if cases:
        return cases, "validation"
    try:
        indices = resolve_splits(dataset, bundle.data.split_config(dataset.root))["val"]
    except MedsightError:
        indices = []
    if len(indices):
        return [dataset.cases[i] for i in np.sort(indices)], "validation"
    return list(dataset.cases), "data set"
