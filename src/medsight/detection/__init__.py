"""Lesion detection: boxes in, boxes out (issue 34). The task's data sets are in
:mod:`medsight.data.det_layouts`, its box record in :mod:`medsight.boxes`."""
