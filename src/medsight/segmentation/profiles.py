"""Inference profiles of a segmenter, chosen from measurements: what each test-time view and a denser window
overlap add to the pooled AUC and F1, against the seconds they cost.

When training ends, :func:`measure_profiles` predicts up to ``MAX_CASES`` cases the model never trained on (the
validation cases; a fold ensemble's out-of-fold cases, each by its own fold's model) once per test-time view and
candidate overlap, timing each pass, and scores every candidate: the first 1, 2, 4, ... views (in
:func:`~medsight.inference.segment.tta_views` order) at each overlap in {the bundle's, ``LOW_OVERLAP`` when lower}.
A candidate's probabilities are the mean of its views' maps (stitching is linear, so that is what predicting with
those views gives), centred and thresholded as the bundle says; its seconds are the sum of its passes' (each view
timed in a sliding pass of its own: an upper bound, as prediction runs a window's views in one forward pass).

* ``accurate``: every view at the bundle's overlap, the options it was trained to predict with;
* ``fast``: the fastest candidate whose pooled AUC is at most ``AUC_SLACK`` and pooled F1 at most ``F1_SLACK``
  below ``accurate``'s (``accurate`` itself when none is faster). ``fast`` is the bundle's default profile.

A fold ensemble keeps all its members in both profiles: out of fold, every case was trained on by every member but
its own, so what an extra member adds cannot be measured there; the seconds count every member.

Example:
    >>> profiles, note, rows = measure_profiles(lambda case_id: segmenter, cases, members=1)
    >>> profiles["fast"].views, profiles["fast"].overlap
    (1, 0.25)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import islice
from time import perf_counter

import numpy as np

from medsight.bundle_fields import InferenceProfile
from medsight.inference.segment import sliding_window_probs, tta_views
from medsight.segmentation.pixel_scores import PixelScores

#: the largest drop of the pooled AUC and F1 from ``accurate`` that ``fast`` may have
AUC_SLACK, F1_SLACK = 0.0005, 0.002
#: cases measured at most (the first ones)
MAX_CASES = 8
#: the lower overlap tried besides the bundle's own
LOW_OVERLAP = 0.25


class _Tally:
    """One candidate's pooled scores over the cases: the foreground AUC (binary) and the pooled Dice per class."""

    def __init__(self, n_classes: int) -> None:
        self.pixels = PixelScores() if n_classes == 2 else None
        self.overlap = np.zeros((n_classes, 3), np.int64)  # per class: true positives, predicted, true
        self.seconds = 0.0

    def add(self, probs: np.ndarray, labels: np.ndarray, truth: np.ndarray, roi: np.ndarray | None,
            seconds: float) -> None:
        inside = np.ones(truth.shape, bool) if roi is None else np.asarray(roi, bool)
        if self.pixels is not None:
            self.pixels.add(probs[1], truth, roi=inside)
        for c in range(1, len(self.overlap)):
            pred, true = (labels == c) & inside, (truth == c) & inside
            self.overlap[c] += [int((pred & true).sum()), int(pred.sum()), int(true.sum())]
        self.seconds += seconds

    def scores(self, n_cases: int) -> dict[str, float | None]:
        tp, pred, true = self.overlap[1:].T
        dice = [2 * a / (b + c) for a, b, c in zip(tp, pred, true, strict=True) if b + c]
        return {"auc": None if self.pixels is None or not self.pixels.defined else round(self.pixels.roc_auc(), 6),
                "f1": round(float(np.mean(dice)), 6) if dice else None, "seconds": round(self.seconds / n_cases, 3)}


def measure_profiles(segmenter_for: Callable[[str], object], cases: Iterable, *, members: int = 1,
                     progress: bool = False) -> tuple[dict[str, InferenceProfile], str, list[dict]]:
    """Measure the candidates on ``cases`` and choose the ``fast`` and ``accurate`` profiles (see the module).

    Args:
        segmenter_for: the :class:`~medsight.inference.segmenter.Segmenter` that predicts a case id (a fold
            ensemble: the case's own fold model, with the ensemble's thresholds and centring level).
        cases: ``(case_id, sample, truth, roi)``, cases the model never trained on.
        members: the networks the shipped bundle runs per case (its seconds count each).

    Returns:
        ``(profiles, note, rows)``: ``rows`` has every candidate's ``views``, ``overlap``, ``auc``, ``f1`` and
        ``seconds`` per case.
    """
    from medsight.progress import track
    from medsight.transforms.preprocess import resize, spacing_shape

    tallies: dict[tuple[int, float], _Tally] = {}
    n_cases, first = 0, None
    for case_id, sample, truth, roi in track(islice(cases, MAX_CASES), description="measuring profiles",
                                             enabled=progress):
        segmenter = segmenter_for(case_id)
        settings = segmenter.settings
        views = tta_views(segmenter.bundle.spatial_dims, mirror_tta=settings.mirror_tta,
                          transpose_tta=settings.transpose_tta)
        first = first or (len(views), settings.overlap)
        working = resize(segmenter.prepare(sample),
                         spacing_shape(sample.spatial_shape, sample.spacing, settings.target_spacing))
        truth = np.zeros(sample.spatial_shape, np.int64) if truth is None else np.asarray(truth)
        for overlap in _overlaps(settings.overlap):
            maps, seconds = [], []
            for view in views:
                start = perf_counter()
                maps.append(np.mean([sliding_window_probs(
                    net, working, patch_size=segmenter.bundle.preprocess.size, overlap=overlap, views=[view],
                    device=segmenter.device) for net in segmenter.networks], axis=0))
                seconds.append((perf_counter() - start) * members)
            for count in _view_counts(len(views)):
                probs = segmenter.centred(resize(np.mean(maps[:count], axis=0), sample.spatial_shape))
                tally = tallies.setdefault((count, overlap), _Tally(len(segmenter.label_names)))
                tally.add(probs, segmenter.labels_from(probs), truth, roi, sum(seconds[:count]))
        n_cases += 1
    rows = [{"views": views, "overlap": overlap, **tally.scores(n_cases)}
            for (views, overlap), tally in sorted(tallies.items())]
    accurate = next(row for row in rows if (row["views"], row["overlap"]) == first)
    fast = min((row for row in rows if _keeps(row, accurate)), key=lambda row: row["seconds"])
    note = (f"measured on {n_cases} case(s) the model never trained on: {len(rows)} candidates (the first 1, 2, 4, "
            f"... of {first[0]} test-time view(s) at overlap {' and '.join(f'{o:g}' for o in _overlaps(first[1]))}); "
            f"fast is the fastest whose pooled AUC is at most {AUC_SLACK:g} and F1 at most {F1_SLACK:g} below "
            f"accurate's; {members} member(s) in both")
    return {"fast": InferenceProfile(**fast), "accurate": InferenceProfile(**accurate)}, note, rows


def with_profiles(settings, segmenter_for: Callable[[str], object], cases: Iterable, *, members: int = 1,
                  progress: bool = False):
    """``settings`` (a bundle's :class:`~medsight.bundle_fields.SegmentationSettings`) with the measured profiles,
    ``fast`` as the default (:func:`measure_profiles`)."""
    profiles, note, _ = measure_profiles(segmenter_for, cases, members=members, progress=progress)
    return settings.model_copy(update={"profiles": profiles, "default_profile": "fast", "profile_note": note})


def _overlaps(own: float) -> list[float]:
    return sorted({float(own), min(float(own), LOW_OVERLAP)}, reverse=True)


def _view_counts(total: int) -> list[int]:
    counts, k = [], 1
    while k < total:
        counts.append(k)
        k *= 2
    return [*counts, total]


def _keeps(row: dict, accurate: dict) -> bool:
    """Whether ``row`` is within the slack of ``accurate`` on every score ``accurate`` has."""
    for key, slack in (("auc", AUC_SLACK), ("f1", F1_SLACK)):
        if accurate[key] is not None and (row[key] is None or row[key] < accurate[key] - slack):
            return False
    return True
