"""Talk to a PACS over DICOMweb: query studies (QIDO-RS), run a bundle on a study (WADO-RS in,
SEG / SR out through STOW-RS), and watch for new studies with a persisted state.

Example:
    >>> from medsight.pacs import PacsClient, SeriesFilter, run_study
    >>> run_study(PacsClient("http://pacs:8042/dicom-web"), study_uid, "runs/ct/model", work_dir="work")
"""

from medsight.pacs.client import PacsClient, PacsError, PacsUnavailableError, SeriesFilter
from medsight.pacs.run import NoMatchingSeriesError, run_study
from medsight.pacs.watch import WatchState, WatchStateError, load_state, save_state, watch

__all__ = [
    "NoMatchingSeriesError",
    "PacsClient",
    "PacsError",
    "PacsUnavailableError",
    "SeriesFilter",
    "WatchState",
    "WatchStateError",
    "load_state",
    "run_study",
    "save_state",
    "watch",
]
