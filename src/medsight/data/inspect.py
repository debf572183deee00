"""Know your data before training on it: ``medsight data inspect``.

:func:`inspect_dataset` reads every image of a data set once and reports, as JSON:
counts per class and split; sizes, modes and spacings; every manifest row it cannot use (a
missing file, an empty cell, an unknown split) and every unreadable file, each with its reason;
exact duplicates (same bytes, or same pixels for npz rows) and near duplicates (64-bit
perceptual hash within ``near_threshold`` bits); duplicates that cross splits (leakage) or carry
different labels; images whose mean or standard deviation is an outlier by both a robust z-score and the
1.5 x IQR fences; and DICOM files
that still hold patient-identifying fields (their names only, never the values). A bad
file is recorded and the inspection goes on.

Example:
    >>> report = inspect_dataset("brain_mri_tumor", out=Path("brain.json"))
    >>> report["summary"]["redundant_copies"]
    25
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medsight.atomic_write import atomic_write_text
from medsight.data import duplicates
from medsight.data.file_errors import file_error, one_line
from medsight.data.layouts import Item, LabelledSet, item_id, open_dataset
from medsight.errors import ConfigError
from medsight.hashing import file_sha256
from medsight.sample import Sample

#: The most examples of one kind of problem the table shows (the JSON report lists them all).
SHOWN = 10


@dataclass
class _Features:
    """What the checks need from each readable item (positions in ``index``)."""

    index: list[int] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)
    features: list[np.ndarray] = field(default_factory=list)
    means: list[float] = field(default_factory=list)
    stds: list[float] = field(default_factory=list)
    sizes: Counter = field(default_factory=Counter)
    modes: Counter = field(default_factory=Counter)
    spacings: Counter = field(default_factory=Counter)
    unreadable: list[dict[str, str]] = field(default_factory=list)
    phi: list[dict[str, Any]] = field(default_factory=list)


def inspect_dataset(
    path: str | Path,
    *,
    out: Path | None = None,
    near_threshold: int = 4,
    z_threshold: float = 4.0,
    progress: bool = True,
    task: str | None = None,
) -> dict:
    """Inspect the data set at ``path`` and return (and, given ``out``, write) the JSON report.

    Args:
        path: anything :func:`medsight.data.layouts.open_dataset` opens; with ``task="detection"`` (or a
            path :func:`medsight.data.det_inspect.wants_detection` recognises) a detection set, whose
            report is :func:`medsight.data.det_inspect.inspect_detection`'s.
        out: where to write the report as JSON.
        near_threshold: the most perceptual-hash bits (of 64) two near duplicates may differ in.
        z_threshold: the robust z-score (median / MAD) above which an intensity is an outlier.
        progress: show a progress bar while files are read.
        task: ``"detection"`` for a detection set; None to recognise it from ``path``.

    Raises:
        DatasetError: the layout itself is unusable (see ``open_dataset``); single bad files
            are reported, not raised.
    """
    from medsight.data.det_inspect import inspect_detection, wants_detection

    if task not in (None, "classification", "detection"):
        raise ConfigError("--task", f"data inspect knows the tasks classification and detection, not {task!r}",
                          "leave --task out to recognise the data set, or pass one of these")
    if task == "detection" or (task is None and wants_detection(path)):
        return inspect_detection(path, out=out, progress=progress)
    ds = open_dataset(path, strict=False)
    feats = _npz_features(ds) if ds.kind == "npz" else _file_features(ds, progress)
    ids = [item_id(ds.items[i]) for i in feats.index]
    summary: dict[str, int] = {}
    report: dict[str, Any] = {
        "path": str(path),
        "layout": ds.kind,
        "n_items": len(ds.items),
        "n_readable": len(feats.index),
        "class_names": ds.class_names,
        "class_counts": _class_counts(ds, range(len(ds.items))),
        "splits": _split_counts(ds),
        "skipped_files": ds.skipped_files,
        "manifest_problems": ds.problems,
        "sizes": dict(feats.sizes.most_common()),
        "modes": dict(feats.modes.most_common()),
        "spacings": dict(feats.spacings.most_common()),
        "unreadable": feats.unreadable,
        "summary": summary,
    }
    found = find_duplicates(ds, feats.index, feats.digests, feats.features, near_threshold=near_threshold)
    exact = report["exact_duplicates"] = found["exact"]
    near = report["near_duplicates"] = found["near"]
    report["cross_split_duplicates"] = found["cross_split"]
    report["conflicting_labels"] = found["conflicting_labels"]
    report["intensity_outliers"] = _outliers(
        ids, {"mean": np.array(feats.means), "std": np.array(feats.stds)}, z_threshold
    )
    report["phi"] = feats.phi
    summary.update(
        unreadable=len(feats.unreadable),
        exact_duplicate_groups=len(exact),
        exact_duplicate_files=sum(len(g) for g in exact),
        redundant_copies=sum(len(g) - 1 for g in exact),
        near_duplicate_groups=len(near),
        cross_split_duplicates=len(report["cross_split_duplicates"]),
        conflicting_labels=len(report["conflicting_labels"]),
        intensity_outliers=len({o["path"] for o in report["intensity_outliers"]}),
        phi_files=len(feats.phi),
        skipped_files=len(ds.skipped_files),
        manifest_problems=len(ds.problems),
    )
    if out is not None:
        atomic_write_text(Path(out), json.dumps(report, indent=2))
    return report


def find_duplicates(
    ds: LabelledSet, index: list[int], digests: list[str], features: list[np.ndarray], *, near_threshold: int = 4
) -> dict[str, list]:
    """Duplicates among the items ``ds.items[index]`` (given their digests and perceptual features).

    Args:
        index: positions in ``ds.items`` of the items read.
        digests: each one's content digest (:func:`item_digest`).
        features: each one's 64 low frequencies (:func:`medsight.data.duplicates.low_frequencies`).
        near_threshold: the most perceptual-hash bits (of 64) two near duplicates may differ in.

    Returns:
        ``exact`` and ``near``: groups of item ids; ``cross_split`` and ``conflicting_labels``: the
        groups whose members sit in different splits (leakage) or carry different labels.
    """
    ids = [item_id(ds.items[i]) for i in index]
    exact = duplicates.exact_groups(digests)
    hashes = duplicates.centred_hashes(np.array(features)) if features else np.zeros(0, np.uint64)
    near = duplicates.near_groups(digests, hashes, max_bits=near_threshold)
    groups = [("exact", g) for g in exact] + [("near", g) for g in near]
    return {
        "exact": [[ids[i] for i in g] for g in exact],
        "near": [[ids[i] for i in g] for g in near],
        "cross_split": _mixed(ds, index, ids, groups, "split"),
        "conflicting_labels": _mixed(ds, index, ids, groups, "label"),
    }


def item_digest(item: Item, sample: Sample) -> str:
    """The SHA-256 of an item's file, or of its pixels when it is no single file (a series, an npz row)."""
    source = Path(item.source)
    if source.is_file() and item.index is None:
        return file_sha256(source)
    return hashlib.sha256(np.ascontiguousarray(sample.array).tobytes()).hexdigest()


def render_inspection(report: dict, console) -> None:
    """Print the report as a Rich table: the facts, then one row per kind of problem."""
    from rich.table import Table

    from medsight.data.det_inspect import render_detection_inspection

    if report.get("task") == "detection":
        render_detection_inspection(report, console)
        return
    table = Table(title=f"{report['path']} ({report['layout']})", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("items", f"{report['n_items']} ({report['n_readable']} readable)")
    table.add_row("classes", _counts(report["class_counts"]) or "unlabelled")
    for split, counts in (report["splits"] or {}).items():
        table.add_row(f"  {split}", f"{counts['n']}: {_counts(counts['class_counts'])}")
    for key in ("sizes", "modes", "spacings"):
        table.add_row(key, _counts(report[key], top=5))
    s = report["summary"]
    root = str(report["path"]).rstrip("/") + "/"
    problems = [
        ("manifest rows left out", s["manifest_problems"], report["manifest_problems"]),
        ("unreadable files", s["unreadable"], report["unreadable"]),
        ("non-image files skipped", s["skipped_files"], report["skipped_files"][:3]),
        (f"exact duplicates ({s['exact_duplicate_files']} files, {s['redundant_copies']} redundant)",
         s["exact_duplicate_groups"], report["exact_duplicates"][:3]),
        ("near-duplicate groups", s["near_duplicate_groups"], report["near_duplicates"][:3]),
        ("duplicates across splits (leakage)", s["cross_split_duplicates"], report["cross_split_duplicates"][:3]),
        ("duplicates with different labels", s["conflicting_labels"], report["conflicting_labels"][:3]),
        ("intensity outliers", s["intensity_outliers"], report["intensity_outliers"][:3]),
        ("DICOM files with patient fields", s["phi_files"], report["phi"][:3]),
    ]
    for name, count, examples in problems:
        style = "green" if count == 0 else "yellow"
        detail = "" if count == 0 else "\n".join(_short(e, root) for e in examples[:SHOWN])
        if len(examples) > SHOWN:
            detail += f"\n  ... and {len(examples) - SHOWN} more (all in the JSON report)"
        table.add_row(f"[{style}]{name}[/{style}]", f"[{style}]{count}[/{style}]" + (f"\n{detail}" if detail else ""))
    console.print(table)


def _file_features(ds: LabelledSet, progress: bool) -> _Features:
    from medsight.progress import track

    feats = _Features()
    checked: set[Path] = set()
    for i in track(range(len(ds.items)), description="inspecting", enabled=progress):
        try:
            _inspect_item(ds, i, feats, checked)
        except Exception as exc:  # one file's failure, whatever raised it, is listed; the inspection goes on
            feats.unreadable.append({"path": item_id(ds.items[i]), "reason": one_line(file_error(ds.items[i].source,
                                                                                                exc))})
    return feats


def _inspect_item(ds: LabelledSet, i: int, feats: _Features, checked: set[Path]) -> None:
    """Read item ``i`` and add what the checks need to ``feats``; DICOM files not yet ``checked`` for PHI.

    Everything that can fail comes first, so an item that fails half-way adds nothing but its reason.
    """
    from medsight.io import is_dicom_file, phi_fields_present

    item = ds.items[i]
    sample = ds.read(item)
    source = Path(item.source)
    digest = item_digest(item, sample)
    features = duplicates.low_frequencies(duplicates.grey_plane(sample.array))
    mean, std = float(sample.array.mean()), float(sample.array.std())
    dicom_files = []
    if sample.meta.get("format") == "dicom":
        found = [source] if source.is_file() else sorted(p for p in source.rglob("*") if is_dicom_file(p))
        dicom_files = [f for f in found if f not in checked]
    phi = [{"path": str(f), "fields": fields} for f in dicom_files if (fields := phi_fields_present(f))]
    feats.index.append(i)
    feats.digests.append(digest)
    feats.features.append(features)
    feats.means.append(mean)
    feats.stds.append(std)
    feats.sizes["x".join(str(n) for n in sample.spatial_shape)] += 1
    feats.modes[str(sample.meta.get("mode") or sample.meta.get("photometric") or sample.meta.get("format"))] += 1
    feats.spacings["x".join(f"{s:g}" for s in sample.spacing)] += 1
    checked.update(dicom_files)
    feats.phi += phi


def _npz_features(ds: LabelledSet) -> _Features:
    """The same features for every npz row at once, without a Sample per image."""
    feats = _Features()
    for images, _ in ds.arrays().values():
        grey = images.mean(axis=-1) if images.ndim == 4 and images.shape[-1] == 3 else images
        flat = grey.reshape(len(grey), -1).astype(np.float64)
        feats.digests += [hashlib.sha256(row.tobytes()).hexdigest() for row in np.ascontiguousarray(images)]
        feats.features += list(duplicates.low_frequencies(grey if grey.ndim == 3 else grey[:, grey.shape[1] // 2]))
        feats.means += flat.mean(axis=1).tolist()
        feats.stds += flat.std(axis=1).tolist()
        feats.sizes["x".join(str(n) for n in grey.shape[1:])] += len(images)
        feats.modes["npz" if grey is images else "npz RGB"] += len(images)
        feats.spacings["x".join("1" for _ in grey.shape[1:])] += len(images)
    position = {(it.split, it.index): i for i, it in enumerate(ds.items)}
    feats.index = [position[(split, j)] for split, (images, _) in ds.arrays().items() for j in range(len(images))]
    return feats


def _class_counts(ds: LabelledSet, indices) -> dict[str, int]:
    counts = Counter(ds.items[i].label for i in indices)
    named = {name: counts.get(k, 0) for k, name in enumerate(ds.class_names)}
    if counts.get(None):
        named["(unlabelled)"] = counts[None]
    return named


def _split_counts(ds: LabelledSet) -> dict[str, dict[str, Any]] | None:
    splits = ds.defined_splits()
    if splits is None:
        return None
    return {name: {"n": len(idx), "class_counts": _class_counts(ds, idx)} for name, idx in splits.items()}


def _mixed(ds: LabelledSet, index: list[int], ids: list[str], groups, attr: str) -> list[dict[str, Any]]:
    """Duplicate groups whose members differ in ``attr`` (split: leakage; label: a conflict)."""
    found = []
    for kind, group in groups:
        values = [getattr(ds.items[index[i]], attr) for i in group]
        if len(set(values)) > 1 and None not in values:
            shown = values if attr == "split" else [ds.class_names[v] for v in values]
            found.append({"kind": kind, "paths": [ids[i] for i in group], f"{attr}s": shown})
    return found


def _outliers(ids: list[str], stats: dict[str, np.ndarray], z_threshold: float) -> list[dict[str, Any]]:
    """Images whose statistic is far from the rest by both rules: robust z (median/MAD) and 1.5 x IQR.

    Requiring both keeps a large, skewed data set from flagging the few percent that the IQR
    fences alone would; each entry gives the value, its robust z and the fences.
    """
    found = []
    for stat, values in stats.items():
        if len(values) < 4:
            continue
        median = float(np.median(values))
        mad = 1.4826 * float(np.median(np.abs(values - median))) or float(np.mean(np.abs(values - median)))
        if mad == 0:
            continue
        q1, q3 = np.percentile(values, [25, 75])
        low, high = q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1)
        z = (values - median) / mad
        for i in np.flatnonzero((np.abs(z) > z_threshold) & ((values < low) | (values > high))):
            found.append({
                "path": ids[i], "stat": stat, "value": round(float(values[i]), 4),
                "robust_z": round(float(z[i]), 2), "iqr_fences": [round(float(low), 4), round(float(high), 4)],
            })
    return found


def _counts(counts: dict[str, int], top: int | None = None) -> str:
    items = list(counts.items())
    text = ", ".join(f"{k}: {v}" for k, v in items[:top])
    return text + (f", ... ({len(items) - top} more)" if top is not None and len(items) > top else "")


def _short(example: Any, root: str) -> str:
    """One example for the table, with paths shown relative to the data set's root."""
    if isinstance(example, dict):
        text = ", ".join(f"{k}={v}" for k, v in example.items())
    elif isinstance(example, list):
        text = " = ".join(str(e) for e in example)
    else:
        text = str(example)
    return "  " + text.replace(root, "")
