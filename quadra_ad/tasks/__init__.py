"""Tasks: the lifecycle classes a config's ``task._target_`` names."""

from quadra_ad.tasks.anomaly_inference import AnomalyInferenceTask
from quadra_ad.tasks.anomaly_training import AnomalyTrainingTask

__all__ = ["AnomalyInferenceTask", "AnomalyTrainingTask"]
