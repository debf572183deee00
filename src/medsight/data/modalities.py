"""Which modalities a labelled data set holds, read from the DICOM headers (no pixels decoded).

A classifier's preprocessing is chosen per modality (CT in HU, MR per image, pictures...), so a data set
that mixes them is refused before training with the counts, instead of training one model on values
that mean different things.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from medsight.errors import DatasetError, MedsightError


def dicom_modalities(ds) -> Counter:
    """``{modality: images}`` over the data set's DICOM items (a series folder counts by its first file);
    items that are not DICOM, whose header does not say, or that cannot be read are not counted."""
    from medsight.io.dicom import is_dicom_file, open_dataset

    counts: Counter = Counter()
    for item in ds.items:
        source = Path(item.source)
        first = next(iter(sorted(source.iterdir())), None) if source.is_dir() else source
        if first is None or item.index is not None or not is_dicom_file(first):
            continue
        try:
            modality = str(open_dataset(first, stop_before_pixels=True).get("Modality", "") or "").strip()
        except MedsightError:  # an unreadable file is the reader's to report (or skip), with its own error
            continue
        if modality:
            counts[modality] += 1
    return counts


def check_one_modality(ds) -> None:
    """Refuse a data set whose DICOM images come from more than one modality.

    Raises:
        DatasetError: naming each modality with its count.
    """
    counts = dicom_modalities(ds)
    if len(counts) > 1:
        found = ", ".join(f"{name}: {n}" for name, n in counts.most_common())
        raise DatasetError(ds.root, f"mixes modalities ({found} images)",
                           "train one model per modality: give each its own data set (or manifest)")
