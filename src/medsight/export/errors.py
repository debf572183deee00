"""The error an export raises when it cannot deliver a faithful model."""

from __future__ import annotations

from medsight.errors import MedsightError


class ExportError(MedsightError):
    """An export that failed, or that does not reproduce the bundle (parity or int8 metric loss)."""
