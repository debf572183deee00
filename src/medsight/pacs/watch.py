"""Poll a PACS for new studies and process each one exactly once, across restarts.

The state file (JSON, replaced atomically after every change) records the studies done
(``processed``: what was stored), those given up on (``failed``: the last error) and the
attempts so far. A study fails for its own reasons (a series the bundle cannot read) at most
``max_attempts`` times, then it is marked failed and left alone; the loop always goes on with
the next study. When the PACS itself is unreachable, nothing is counted against any study:
the watcher waits (exponential backoff, capped) and polls again.

Logs name studies by StudyInstanceUID only, never by patient attributes.

Example:
    >>> watch(PacsClient(url), "runs/ct/model", state_path=Path("pacs_state.json"),
    ...       filters=SeriesFilter(modality="CT"), interval=30)
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medsight.atomic_write import atomic_write_text
from medsight.bundle import Bundle, load_bundle
from medsight.errors import MedsightError
from medsight.pacs.client import PacsClient, PacsUnavailableError, SeriesFilter
from medsight.pacs.run import input_series, run_study, stored_results

log = logging.getLogger(__name__)

STATE_VERSION = 1


class WatchStateError(MedsightError):
    """The watcher's state file is unreadable or not a state file."""


@dataclass
class WatchState:
    """What the watcher has done: ``processed`` / ``failed`` study UID -> record; ``attempts`` per study."""

    processed: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: dict[str, dict[str, Any]] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)

    def done(self, study_uid: str) -> bool:
        return study_uid in self.processed or study_uid in self.failed


def load_state(path: str | Path) -> WatchState:
    """The state in ``path`` (an empty state when the file does not exist yet).

    Raises:
        WatchStateError: the file is not valid JSON or not a medsight watch state.
    """
    path = Path(path)
    if not path.exists():
        return WatchState()
    fix = ("restore it from a backup, or delete it to start over (every study on the PACS will then be "
           "processed again)")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WatchStateError(path, f"is not valid JSON ({exc})", fix) from exc
    keys = ("processed", "failed", "attempts")
    if not isinstance(raw, dict) or raw.get("version") != STATE_VERSION or not all(
            isinstance(raw.get(k), dict) for k in keys):
        raise WatchStateError(path, f"is not a version-{STATE_VERSION} medsight watch state "
                              "(expected keys version, processed, failed, attempts)", fix)
    return WatchState(processed=raw["processed"], failed=raw["failed"],
                      attempts={str(k): int(v) for k, v in raw["attempts"].items()})


def save_state(state: WatchState, path: str | Path) -> Path:
    """Write the state whole or not at all (:func:`medsight.atomic_write.atomic_write_text`)."""
    path = Path(path)
    payload = {"version": STATE_VERSION, "processed": state.processed, "failed": state.failed,
               "attempts": state.attempts}
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True))
    return path


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def watch(client: PacsClient, bundle: Bundle | str | Path, *, state_path: str | Path,
          filters: SeriesFilter | None = None, interval: float = 30.0, once: bool = False,
          max_polls: int | None = None, max_attempts: int = 3, max_backoff: float = 300.0,
          work_dir: str | Path | None = None, stop: threading.Event | None = None,
          sleep: Callable[[float], None] = time.sleep) -> WatchState:
    """Poll the PACS and run the bundle on every new matching study, once.

    Args:
        client: the PACS.
        bundle: a bundle folder or a loaded bundle.
        state_path: the JSON state file (created when missing).
        filters: the modality / series description the bundle applies to.
        interval: seconds between polls.
        once: poll a single time and return.
        max_polls: return after this many polls (``None``: run until ``stop`` is set).
        max_attempts: tries per study before it is marked failed.
        max_backoff: the longest wait while the PACS is down, in seconds.
        work_dir: where series are downloaded (default: a folder next to the state file).
        stop: set it to end the loop after the current poll.
        sleep: how to wait (tests pass a fast one).

    Returns:
        The final state.

    Raises:
        WatchStateError: the state file is corrupt (checked before the first poll).
    """
    state_path = Path(state_path)
    state = load_state(state_path)
    loaded = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    filters = filters or SeriesFilter()
    work = Path(work_dir) if work_dir is not None else state_path.parent / f"{state_path.stem}_work"
    polls, down = 0, 0
    while True:
        polls += 1
        try:
            _poll(client, loaded, state, state_path, filters, work, max_attempts)
            down = 0
            wait = interval
        except PacsUnavailableError as exc:
            down += 1
            wait = min(max(interval, 0.1) * 2**down, max_backoff)
            log.warning("PACS unavailable (%s); next poll in %.1f s", exc.problem, wait)
        if once or (max_polls is not None and polls >= max_polls) or (stop is not None and stop.is_set()):
            return state
        if stop is not None:
            if stop.wait(wait):
                return state
        else:
            sleep(wait)


def _poll(client: PacsClient, bundle: Bundle, state: WatchState, state_path: Path, filters: SeriesFilter,
          work: Path, max_attempts: int) -> None:
    """One pass over the PACS's studies. Raises PacsUnavailableError (nothing counted) when the PACS is down."""
    for study in client.studies(modality=filters.modality):
        uid = study.study_uid
        if state.done(uid) or not input_series(client, uid, filters):
            continue
        found = stored_results(client, uid, bundle)
        if found:  # stored before a crash that came ahead of the state save: do not store it twice
            state.processed[uid] = {"at": _now(), "found_in_pacs": [s.series_uid for s in found]}
            log.info("study %s already holds this model's result: marked processed", uid)
            save_state(state, state_path)
            continue
        try:
            stored = run_study(client, uid, bundle, work_dir=work, where=filters)
        except PacsUnavailableError:
            raise
        except Exception as exc:  # a bad study must never stop the watcher
            _record_failure(state, uid, exc, max_attempts)
        else:
            state.processed[uid] = {"at": _now(), "outputs": [
                {k: o[k] for k in ("kind", "source_series_uid", "sop_instance_uid", "series_instance_uid")}
                for o in stored["outputs"]]}
            state.attempts.pop(uid, None)
            log.info("study %s processed: %d object(s) stored", uid, len(stored["outputs"]))
        save_state(state, state_path)


def _record_failure(state: WatchState, uid: str, exc: Exception, max_attempts: int) -> None:
    attempts = state.attempts.get(uid, 0) + 1
    state.attempts[uid] = attempts
    error = f"{type(exc).__name__}: {exc}"
    if attempts >= max_attempts:
        state.failed[uid] = {"at": _now(), "attempts": attempts, "error": error}
        log.error("study %s failed (attempt %d/%d), giving up: %s", uid, attempts, max_attempts, error)
    else:
        log.error("study %s failed (attempt %d/%d), will retry: %s", uid, attempts, max_attempts, error)
