"""Data set layouts, splits, QC and the synthetic phantoms (the Sample record is :mod:`medsight.sample`)."""
