"""Scores to numbers: the scored sets a test produces, the thresholds (the one place that
decides them), the metrics and AUPRO.

:mod:`~quadra_ad.evaluation.thresholds` and :mod:`~quadra_ad.evaluation.scored_set` need only
numpy, so the torch-free deploy room reads thresholds through them.
"""
