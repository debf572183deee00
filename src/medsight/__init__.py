"""medsight: deep learning on medical images, from files to a deployed model."""

__version__ = "0.1.0"
