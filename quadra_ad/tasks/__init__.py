"""Tasks: the lifecycle classes a config's ``task._target_`` names."""

from quadra_ad.tasks.anomaly_training import AnomalyTrainingTask

__all__ = ["AnomalyTrainingTask"]
