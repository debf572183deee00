"""Batch prediction spread over worker processes, written in input order and resumable.

``medsight predict --workers N`` starts N processes (the ``spawn`` start method, safe with
PyTorch threads and CUDA), each loading the bundle once and running ``cores // N`` torch
threads. The files are handed out in order and the results come back in that same order,
so the output (the CSV, or the mask folder and its ``predictions.csv``) is identical, row for
row, to the one-worker path's (:func:`~medsight.inference.predictor.predict_to_file`,
:func:`~medsight.inference.segmenter.segment_to_folder`). Each row is flushed as it is
written, so a stopped run keeps a prefix of the rows and ``resume=True`` goes on from there.

Example:
    >>> predict_parallel(bundle="runs/demo/model", inputs=[Path("scans/")], out=Path("preds.csv"), workers=2)
    {'ok': 120, 'errors': 1, 'skipped': 0}
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from medsight.errors import ConfigError

# The worker's model (a Predictor or a Segmenter), built once per process by _start_worker.
_WORKER: dict[str, Any] = {}


def worker_threads(workers: int) -> int:
    """Torch threads per worker: the machine's cores shared out, at least 1."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def predict_parallel(
    *, bundle: str | Path, inputs: list[Path], out: Path, workers: int, backend: str = "auto",
    resume: bool = False, progress: bool = True, out_of_domain: str | None = None,
) -> dict[str, int]:
    """:func:`~medsight.inference.predictor.predict_to_file` (CSV output) on ``workers`` processes.

    Raises:
        ConfigError: ``workers`` below 1, or a ``.json`` output (write a CSV, it streams).
        BundleError: the bundle cannot be loaded (checked here, before any worker starts).
    """
    from medsight.inference.predictor import Predictor, expand_inputs
    from medsight.inference.results_csv import ResultsCsv, prediction_fields

    _check_workers(workers)
    out = Path(out)
    if out.suffix.lower() == ".json":
        raise ConfigError(f"--out {out}", "parallel prediction streams rows into a CSV",
                          "use a .csv output, or --workers 1 for JSON")
    # fails here, in one clear line, on a bad bundle
    predictor = Predictor(bundle, backend=backend, out_of_domain=out_of_domain)
    files = expand_inputs(inputs)
    fields = prediction_fields(predictor.label_names, domain=predictor.bundle.domain is not None)
    resolved = predictor.backend
    del predictor
    with ResultsCsv(out, fields, resume=resume) as results:
        todo = [path for path in files if str(path) not in results.done]
        counts = {"ok": 0, "errors": 0, "skipped": len(files) - len(todo)}
        job = ("classify", str(bundle), resolved, None, out_of_domain)
        for row in _ordered_rows(job, todo, workers, progress, "predicting"):
            counts["errors" if row["error"] else "ok"] += 1
            results.write(row)
    return counts


def segment_parallel(
    *, bundle: str | Path, inputs: list[Path], out: Path, workers: int, resume: bool = False, progress: bool = True,
    probabilities: bool = False, mixed_precision: bool = False, backend: str = "auto", profile: str | None = None,
) -> dict[str, int]:
    """:func:`~medsight.inference.segmenter.segment_to_folder` on ``workers`` processes.

    Raises:
        ConfigError: ``workers`` below 1.
        BundleError: the bundle is not a usable segmentation bundle.
    """
    from medsight.inference.results_csv import ResultsCsv
    from medsight.inference.segmenter import Segmenter, segment_fields, segmentation_inputs

    _check_workers(workers)
    segmenter = Segmenter(bundle, backend=backend, mixed_precision=mixed_precision, profile=profile)  # fails here
    files = segmentation_inputs(inputs, volumes=segmenter.volumes)
    out = Path(out)
    fields = segment_fields(segmenter.label_names, probabilities=probabilities)
    with ResultsCsv(out / "predictions.csv", fields, resume=resume) as results:
        todo = [path for path in files if str(path) not in results.done]
        counts = {"ok": 0, "errors": 0, "skipped": len(files) - len(todo)}
        job = ("segment", str(bundle), backend, str(out), (probabilities, mixed_precision, profile))
        for row in _ordered_rows(job, todo, workers, progress, "segmenting"):
            counts["errors" if row["error"] else "ok"] += 1
            results.write(row)
    return counts


def _check_workers(workers: int) -> None:
    if workers < 1:
        raise ConfigError(f"--workers {workers}", "needs at least one worker", "pass --workers 1 or more")


def _ordered_rows(job: tuple, files: list[Path], workers: int, progress: bool, desc: str) -> Iterator[dict]:
    """Rows for ``files`` in their order, computed by ``workers`` spawned processes."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from medsight.progress import track

    if not files:
        return
    chunk = max(1, min(16, len(files) // (workers * 4)))
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                             initargs=(*job, worker_threads(workers))) as pool:
        rows = pool.map(_row, [str(path) for path in files], chunksize=chunk)
        yield from track(_Sized(rows, len(files)), description=desc, enabled=progress)


class _Sized:
    """An iterator with a length, so the progress bar knows the total."""

    def __init__(self, items: Iterator, n: int) -> None:
        self.items, self.n = items, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator:
        return iter(self.items)


def _start_worker(kind: str, bundle: str, backend: str | None, out: str | None,
                  options: tuple[bool, bool] | str | None, threads: int) -> None:
    """Runs once in each worker: thread count, then the model (loaded once per process).

    ``options``: a segmenter's ``(probabilities, mixed_precision)``; a classifier's out-of-domain action.
    """
    import torch

    torch.set_num_threads(threads)
    if kind == "classify":
        from medsight.inference.predictor import Predictor

        _WORKER["row"] = _classify_row(Predictor(bundle, backend=backend or "auto", out_of_domain=options))
    else:
        from medsight.inference.segmenter import Segmenter

        probabilities, mixed_precision, profile = options
        _WORKER["row"] = _segment_row(Segmenter(bundle, mixed_precision=mixed_precision, backend=backend or "auto",
                                                profile=profile), Path(out or "masks"), probabilities)


def _row(path: str) -> dict[str, Any]:
    return _WORKER["row"](Path(path))


def _classify_row(predictor) -> Callable[[Path], dict[str, Any]]:
    """The CSV row :func:`~medsight.inference.predictor.predict_to_file` writes for one file."""
    from medsight.inference.predictor import iter_predictions
    from medsight.inference.results_csv import csv_row, prediction_fields

    fields = prediction_fields(predictor.label_names, domain=predictor.bundle.domain is not None)
    return lambda path: csv_row(next(iter_predictions(predictor, [path], progress=False)), fields)


def _segment_row(segmenter, out: Path, probabilities: bool) -> Callable[[Path], dict[str, Any]]:
    """The row (and the mask files) :func:`~medsight.inference.segmenter.segment_to_folder` writes for one file."""
    from medsight.inference.segmenter import segment_row

    return lambda path: segment_row(segmenter, path, out, probabilities=probabilities)
