"""Classification: tensors in memory, its training step and loop, calibration, metrics, evaluation, uncertainty."""
