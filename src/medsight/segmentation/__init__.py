"""Segmentation: plan, cases, patches, training step, losses, thresholds, metrics, evaluation, the fold ensemble."""
