"""Robustness checks: image corruptions, MRI artefacts and adversarial attacks at graded severities.

``corruptions`` (pure NumPy) and ``attacks`` (FGSM / PGD on a bundle's classifier) are the
building blocks; ``run.run_robustness`` is what ``medsight robustness`` calls.
"""
