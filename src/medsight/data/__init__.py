"""The Sample record, data set layouts, splits, QC and the synthetic phantoms."""

from medsight.data.sample import Sample

__all__ = ["Sample"]
