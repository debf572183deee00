"""Clinician feedback on predictions: a SQLite store with de-identified input copies, and its export."""

from medsight.feedback.store import KINDS, FeedbackError, FeedbackStore, export_dataset

__all__ = ["KINDS", "FeedbackError", "FeedbackStore", "export_dataset"]
