"""From a labelled data set to preprocessed tensors held in memory.

Decoding and preprocessing happen once per run; every epoch then reads the cached
tensors, so the CPU spends its time on the network, not on PNG decoding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medsight.config import PreprocessConfig
from medsight.data.cache import SampleCache, config_hash
from medsight.data.file_errors import file_error, one_line
from medsight.data.layouts import LabelledSet, item_id
from medsight.errors import DatasetError


def load_tensors(
    ds: LabelledSet,
    indices: Sequence[int],
    prep: PreprocessConfig,
    *,
    on_bad_file: str = "error",
    progress: bool = True,
    desc: str = "loading",
    cache: SampleCache | None = None,
):
    """Read and preprocess ``ds.items[indices]`` into a :class:`TensorSet`.

    With a ``cache`` (:func:`medsight.data.cache.cache_from_config` of ``data.cache``), each
    preprocessed image is looked up by its file and ``prep`` first, and stored after a miss.

    A file that fails in any way, a reader's :class:`~medsight.errors.MedsightError` or (the
    last safety net) a decoding library's own exception, is one bad file
    (:func:`~medsight.data.file_errors.file_error`).

    Returns:
        ``(tensor_set, bad_files)`` where ``bad_files`` lists ``{"path", "reason"}`` (one line)
        for every file skipped under ``on_bad_file="skip"``.

    Raises:
        MedsightError: the first bad file when ``on_bad_file="error"``.
        DatasetError: no readable file at all.
    """
    import torch

    from medsight.classification.batches import TensorSet
    from medsight.progress import track
    from medsight.transforms import preprocess

    arrays: list[np.ndarray] = []
    labels: list[int] = []
    ids: list[str] = []
    bad: list[dict[str, str]] = []
    prep_hash = config_hash(prep) if cache is not None else ""
    for i in track(indices, description=desc, enabled=progress):
        item = ds.items[int(i)]
        try:
            if cache is None:
                arrays.append(preprocess(ds.read(item), prep))
            else:
                key = cache.key([item.source], prep_hash, kind="classify", part=item_id(item))
                entry = cache.get_or_build(key, lambda item=item: ({"image": preprocess(ds.read(item), prep)}, {}))
                arrays.append(entry.arrays["image"])
        except Exception as exc:  # one file's failure, whatever raised it: stop in one line, or skip it
            error = file_error(item.source, exc)
            if on_bad_file == "error" and error is exc:
                raise
            if on_bad_file == "error":
                raise error from exc
            bad.append({"path": item.source, "reason": one_line(error)})
            continue
        labels.append(int(item.label) if item.label is not None else -1)
        ids.append(item_id(item))
    if not arrays:
        raise DatasetError(ds.root, f"no readable image in the {desc} split", "run medsight data inspect on it")
    images = torch.from_numpy(np.stack(arrays).astype(np.float32, copy=False))
    return TensorSet(images=images, labels=torch.tensor(labels, dtype=torch.long), ids=ids), bad
